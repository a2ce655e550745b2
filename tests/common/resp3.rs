//! A minimal RESP3 client over a raw socket, enough to receive CLIENT TRACKING pushes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Frame>),
    Push(Vec<Frame>),
    Map(Vec<(Frame, Frame)>),
    Null,
    Other(String),
}

pub struct Resp3 {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Resp3 {
    pub fn connect(port: u16) -> Resp3 {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let writer = stream.try_clone().expect("clone");
        let mut c = Resp3 {
            reader: BufReader::new(stream),
            writer,
        };
        let hello = c.call(&[b"HELLO", b"3"]);
        assert!(matches!(hello, Frame::Map(_)), "HELLO 3 failed: {hello:?}");
        c
    }

    pub fn send(&mut self, args: &[&[u8]]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n", a.len()).as_bytes());
            out.extend(*a);
            out.extend(b"\r\n");
        }
        self.writer.write_all(&out).expect("write");
    }

    /// Sends a command and returns its reply, skipping (and returning none of) pushes before it.
    pub fn call(&mut self, args: &[&[u8]]) -> Frame {
        self.send(args);
        loop {
            match self.read() {
                Frame::Push(_) => continue,
                f => return f,
            }
        }
    }

    pub fn set_timeout(&mut self, t: Duration) {
        self.reader.get_ref().set_read_timeout(Some(t)).expect("timeout");
    }

    /// Reads one frame; panics on timeout.
    pub fn read(&mut self) -> Frame {
        self.try_read().expect("no frame before the read timeout")
    }

    pub fn try_read(&mut self) -> Option<Frame> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).ok()?;
        if line.len() < 3 {
            return None;
        }
        let kind = line[0];
        let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        Some(match kind {
            b'+' => Frame::Simple(body),
            b'-' => Frame::Error(body),
            b':' => Frame::Int(body.parse().expect("int")),
            b'_' => Frame::Null,
            b'$' => {
                let n: i64 = body.parse().expect("len");
                if n < 0 {
                    Frame::Bulk(None)
                } else {
                    let mut buf = vec![0u8; n as usize + 2];
                    self.reader.read_exact(&mut buf).ok()?;
                    buf.truncate(n as usize);
                    Frame::Bulk(Some(buf))
                }
            }
            b'*' | b'>' | b'~' => {
                let n: i64 = body.parse().expect("len");
                let items = (0..n.max(0)).map(|_| self.read()).collect();
                if kind == b'>' {
                    Frame::Push(items)
                } else {
                    Frame::Array(items)
                }
            }
            b'%' => {
                let n: i64 = body.parse().expect("len");
                Frame::Map((0..n).map(|_| (self.read(), self.read())).collect())
            }
            _ => Frame::Other(body),
        })
    }

    /// Waits for an `invalidate` push and returns the keys it names.
    pub fn expect_invalidation(&mut self) -> Vec<Vec<u8>> {
        loop {
            match self.read() {
                Frame::Push(items) => {
                    if items.first() == Some(&Frame::Bulk(Some(b"invalidate".to_vec()))) {
                        return match items.get(1) {
                            Some(Frame::Array(keys)) => keys
                                .iter()
                                .filter_map(|k| match k {
                                    Frame::Bulk(Some(b)) => Some(b.clone()),
                                    _ => None,
                                })
                                .collect(),
                            _ => Vec::new(),
                        };
                    }
                }
                other => panic!("expected an invalidation push, got {other:?}"),
            }
        }
    }
}
