#!/bin/bash
# test-failures.sh LOG: from a `go test -v` log, each failed test's own messages
# (file_test.go:N: lines, and panics) again, in one block. A failed e2e test appends its
# codeboxd log, which can run to thousands of lines and push the messages that say what
# failed out of a viewer that shows only the tail.
set -euo pipefail
log=${1:?usage: test-failures.sh LOG}
echo
echo "=== what failed (from $log)"
awk '
	# A top-level test starts: its messages so far are forgotten.
	/^=== RUN   [^\/]+$/ { n = 0; next }
	/^[ \t]+[A-Za-z0-9_]+_test\.go:[0-9]+: / || /^panic: / {
		if (n < 60) buf[n++] = substr($0, 1, 600)
		next
	}
	/^--- FAIL: [^\/]+ / {
		print $0
		for (i = 0; i < n; i++) print buf[i]
		n = 0
	}
' "$log"
