#!/usr/bin/env bash
# Prints one "N passed, N failed" line summing every runner's own summary in the given logs:
# cargo test ("test result: ok. 5 passed; 1 failed"), node --test ("# pass 5" / "# fail 1")
# and pytest ("5 passed, 1 failed in 3.2s").
cat "$@" 2>/dev/null | awk '
  /^test result:/          { p += $4; f += $6; next }
  /^# pass [0-9]+$/        { p += $3; next }
  /^# fail [0-9]+$/        { f += $3; next }
  /^ℹ pass [0-9]+$/        { p += $3; next }
  /^ℹ fail [0-9]+$/        { f += $3; next }
  /^(=+ )?[0-9]+ (passed|failed).* in [0-9.]+s/ {
    for (i = 2; i <= NF; i++) {
      gsub(/,/, "", $i)
      if ($(i) ~ /^passed/) p += $(i - 1)
      if ($(i) ~ /^failed/) f += $(i - 1)
    }
  }
  END { printf "%d passed, %d failed\n", p, f }'
