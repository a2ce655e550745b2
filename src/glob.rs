//! Redis-compatible glob matching (the semantics of KEYS and SCAN MATCH), in O(len(pattern) ×
//! len(key)) time instead of Redis's exponential recursion.
//!
//! The pattern is compiled once into tokens, reproducing `stringmatchlen` of Redis 7.0 byte for
//! byte, including its quirks: bytes compare as signed `char` inside `[a-z]` ranges, reversed
//! ranges are swapped, an unterminated `[` class swallows the rest of the pattern, a trailing lone
//! `\` is a literal backslash, and a non-empty pattern never matches an empty key (only the exact
//! pattern `*` does, as KEYS and SCAN special-case it).

#[derive(Debug, Clone, PartialEq, Eq)]
enum ClassItem {
    Byte(u8),
    /// Inclusive range over signed bytes, already ordered low..=high.
    Range(i8, i8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Star,
    Any,
    Literal(u8),
    Class { negated: bool, items: Vec<ClassItem> },
}

impl Token {
    fn matches_byte(&self, b: u8) -> bool {
        match self {
            Token::Star => true,
            Token::Any => true,
            Token::Literal(l) => *l == b,
            Token::Class { negated, items } => {
                let signed = b as i8;
                let hit = items.iter().any(|item| match item {
                    ClassItem::Byte(x) => *x == b,
                    ClassItem::Range(lo, hi) => *lo <= signed && signed <= *hi,
                });
                hit != *negated
            }
        }
    }
}

/// A compiled glob pattern.
#[derive(Debug, Clone)]
pub struct Glob {
    tokens: Vec<Token>,
    match_all: bool,
    literal_prefix: Vec<u8>,
}

impl Glob {
    pub fn new(pattern: &[u8]) -> Glob {
        let tokens = compile(pattern);
        let literal_prefix = tokens
            .iter()
            .map_while(|t| match t {
                Token::Literal(b) => Some(*b),
                _ => None,
            })
            .collect();
        Glob {
            match_all: pattern == b"*",
            tokens,
            literal_prefix,
        }
    }

    /// True when the pattern matches every key (exactly `*`).
    pub fn matches_everything(&self) -> bool {
        self.match_all
    }

    /// The bytes every matching key starts with (possibly empty).
    pub fn literal_prefix(&self) -> &[u8] {
        &self.literal_prefix
    }

    /// True when the pattern has no wildcard at all: it matches exactly one name.
    pub fn is_literal(&self) -> bool {
        !self.match_all && self.literal_prefix.len() == self.tokens.len()
    }

    pub fn matches(&self, key: &[u8]) -> bool {
        if self.match_all {
            return true;
        }
        if key.is_empty() {
            return self.tokens.is_empty();
        }
        // Classic wildcard matching with a single backtrack point: every non-star token matches
        // exactly one byte, so retrying only from the last star is complete and stays O(n·m).
        let tokens = &self.tokens;
        let (mut t, mut k) = (0usize, 0usize);
        let mut backtrack: Option<(usize, usize)> = None;
        while k < key.len() {
            match (tokens.get(t), key.get(k)) {
                (Some(Token::Star), _) => {
                    backtrack = Some((t, k));
                    t = t.saturating_add(1);
                }
                (Some(token), Some(&b)) if token.matches_byte(b) => {
                    t = t.saturating_add(1);
                    k = k.saturating_add(1);
                }
                _ => match backtrack {
                    Some((star_t, star_k)) => {
                        backtrack = Some((star_t, star_k.saturating_add(1)));
                        t = star_t.saturating_add(1);
                        k = star_k.saturating_add(1);
                    }
                    None => return false,
                },
            }
        }
        tokens.get(t..).is_some_and(|rest| rest.iter().all(|tok| *tok == Token::Star))
    }
}

fn compile(p: &[u8]) -> Vec<Token> {
    // `at(i)` mirrors reading the sds terminator past the end in the C code.
    let at = |i: usize| p.get(i).copied().unwrap_or(0);
    let mut tokens = Vec::new();
    let mut i = 0usize;
    while i < p.len() {
        let remaining = p.len().saturating_sub(i);
        match at(i) {
            b'*' => {
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
                i = i.saturating_add(1);
            }
            b'?' => {
                tokens.push(Token::Any);
                i = i.saturating_add(1);
            }
            b'[' => {
                let (token, next) = compile_class(p, i.saturating_add(1));
                tokens.push(token);
                i = next;
            }
            b'\\' if remaining >= 2 => {
                tokens.push(Token::Literal(at(i.saturating_add(1))));
                i = i.saturating_add(2);
            }
            b => {
                tokens.push(Token::Literal(b));
                i = i.saturating_add(1);
            }
        }
    }
    tokens
}

/// Parses a class whose body starts at `i`; returns the token and the index after it.
fn compile_class(p: &[u8], mut i: usize) -> (Token, usize) {
    let at = |i: usize| p.get(i).copied().unwrap_or(0);
    let left = |i: usize| p.len().saturating_sub(i);
    let negated = at(i) == b'^' && i < p.len();
    if negated {
        i = i.saturating_add(1);
    }
    let mut items = Vec::new();
    loop {
        if at(i) == b'\\' && left(i) >= 2 {
            i = i.saturating_add(1);
            items.push(ClassItem::Byte(at(i)));
        } else if at(i) == b']' && left(i) >= 1 {
            break;
        } else if left(i) == 0 {
            // Unterminated: the class ends with the pattern.
            return (Token::Class { negated, items }, p.len());
        } else if left(i) >= 3 && at(i.saturating_add(1)) == b'-' {
            let (a, b) = (at(i) as i8, at(i.saturating_add(2)) as i8);
            items.push(ClassItem::Range(a.min(b), a.max(b)));
            i = i.saturating_add(2);
        } else {
            items.push(ClassItem::Byte(at(i)));
        }
        i = i.saturating_add(1);
    }
    (Token::Class { negated, items }, i.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct transcription of Redis 7.0's recursive `stringmatchlen` (without nocase), used
    /// as the oracle for the compiled matcher.
    fn redis_stringmatch(p: &[u8], s: &[u8]) -> bool {
        fn go(p: &[u8], s: &[u8]) -> bool {
            let at = |v: &[u8], i: usize| v.get(i).copied().unwrap_or(0);
            let (mut pi, mut si) = (0usize, 0usize);
            let (mut plen, mut slen) = (p.len() as isize, s.len() as isize);
            while plen > 0 && slen > 0 {
                match at(p, pi) {
                    b'*' => {
                        while plen > 0 && at(p, pi + 1) == b'*' {
                            pi += 1;
                            plen -= 1;
                        }
                        if plen == 1 {
                            return true;
                        }
                        while slen > 0 {
                            if go(&p[pi + 1..], &s[si..]) {
                                return true;
                            }
                            si += 1;
                            slen -= 1;
                        }
                        return false;
                    }
                    b'?' => {
                        si += 1;
                        slen -= 1;
                    }
                    b'[' => {
                        pi += 1;
                        plen -= 1;
                        let not = at(p, pi) == b'^';
                        if not {
                            pi += 1;
                            plen -= 1;
                        }
                        let mut matched = false;
                        loop {
                            if at(p, pi) == b'\\' && plen >= 2 {
                                pi += 1;
                                plen -= 1;
                                if at(p, pi) == at(s, si) {
                                    matched = true;
                                }
                            } else if at(p, pi) == b']' {
                                break;
                            } else if plen == 0 {
                                pi -= 1;
                                plen += 1;
                                break;
                            } else if plen >= 3 && at(p, pi + 1) == b'-' {
                                let mut start = at(p, pi) as i8 as i32;
                                let mut end = at(p, pi + 2) as i8 as i32;
                                let c = at(s, si) as i8 as i32;
                                if start > end {
                                    std::mem::swap(&mut start, &mut end);
                                }
                                pi += 2;
                                plen -= 2;
                                if c >= start && c <= end {
                                    matched = true;
                                }
                            } else if at(p, pi) == at(s, si) {
                                matched = true;
                            }
                            pi += 1;
                            plen -= 1;
                        }
                        if not {
                            matched = !matched;
                        }
                        if !matched {
                            return false;
                        }
                        si += 1;
                        slen -= 1;
                    }
                    c => {
                        let mut c = c;
                        if c == b'\\' && plen >= 2 {
                            pi += 1;
                            plen -= 1;
                            c = at(p, pi);
                        }
                        if c != at(s, si) {
                            return false;
                        }
                        si += 1;
                        slen -= 1;
                    }
                }
                pi += 1;
                plen -= 1;
                if slen == 0 {
                    while at(p, pi) == b'*' && plen > 0 {
                        pi += 1;
                        plen -= 1;
                    }
                    break;
                }
            }
            plen == 0 && slen == 0
        }
        p == b"*" || go(p, s)
    }

    fn check(p: &[u8], s: &[u8]) {
        assert_eq!(
            Glob::new(p).matches(s),
            redis_stringmatch(p, s),
            "pattern {:?} key {:?}",
            String::from_utf8_lossy(p),
            String::from_utf8_lossy(s)
        );
    }

    #[test]
    fn basic_semantics() {
        let g = Glob::new(b"fmpa:*:{t42}:*");
        assert!(g.matches(b"fmpa:list:{t42}:status=ACTIVE"));
        assert!(!g.matches(b"fmpa:list:{t43}:status=ACTIVE"));
        assert_eq!(g.literal_prefix(), b"fmpa:");
        assert!(Glob::new(b"h?llo").matches(b"hallo"));
        assert!(Glob::new(b"h[ae]llo").matches(b"hello"));
        assert!(!Glob::new(b"h[^e]llo").matches(b"hello"));
        assert!(Glob::new(b"h[a-b]llo").matches(b"hbllo"));
        assert!(Glob::new(b"h\\*llo").matches(b"h*llo"));
        assert!(!Glob::new(b"h\\*llo").matches(b"hallo"));
        assert!(Glob::new(b"*").matches(b""));
        assert!(!Glob::new(b"**").matches(b""));
        assert!(Glob::new(b"").matches(b""));
        assert!(Glob::new(b"abc").is_literal());
        assert!(!Glob::new(b"ab*").is_literal());
        assert_eq!(Glob::new(b"a\\*b*").literal_prefix(), b"a*b");
    }

    #[test]
    fn quirks_match_redis() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"[a-]", b"b"),
            (b"[a-", b"a"),
            (b"[a-", b"-"),
            (b"[", b"x"),
            (b"[]", b"]"),
            (b"[]]", b"]"),
            (b"[^]", b"a"),
            (b"a\\", b"a\\"),
            (b"[\\]]", b"]"),
            (b"[z-a]", b"q"),
            (b"[a-\xff]", b"b"),
            (b"[a-\xff]", b"\x80"),
            (b"[a-\xff]", b"\x05"),
            (b"[\x80-\xfe]", b"\x90"),
            (b"*a", b"a"),
            (b"a*", b"a"),
            (b"a*b*c", b"aXbYc"),
            (b"a*b*c", b"aXbY"),
            (b"?", b""),
            (b"[^a-c]x", b"dx"),
            (b"\\", b"\\"),
            (b"[abc", b"b"),
            (b"[abc", b"bc"),
        ];
        for (p, s) in cases {
            check(p, s);
        }
    }

    #[test]
    fn differential_random() {
        let alphabet: &[u8] = b"ab*?[]^-\\:{}\x00\xff";
        let keys_alphabet: &[u8] = b"ab-]\\:{}\x00\xff*?[";
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..40_000 {
            let plen = (next() % 7) as usize;
            let slen = (next() % 6) as usize;
            let p: Vec<u8> = (0..plen)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let s: Vec<u8> = (0..slen)
                .map(|_| keys_alphabet[(next() % keys_alphabet.len() as u64) as usize])
                .collect();
            check(&p, &s);
        }
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let mut p = b"*a".repeat(30);
        p.push(b'b');
        let key = vec![b'a'; 10_000];
        // Would take ages with exponential backtracking; here it is ~600k steps.
        assert!(!Glob::new(&p).matches(&key));
    }
}
