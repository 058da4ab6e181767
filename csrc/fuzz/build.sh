#!/usr/bin/env bash
# Builds the libFuzzer targets with clang, ASan and UBSan into $1 (default build/fuzz).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../../build/fuzz}"
mkdir -p "$out"
CC="${CC:-clang}"
flags=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -fno-omit-frame-pointer -D_GNU_SOURCE -std=gnu11 -I"$here/.." -pthread)
core=("$here/../rtp.c" "$here/../rtcp.c" "$here/../alloc.c")
"$CC" "${flags[@]}" "$here/fuzz_parsers.c" "${core[@]}" -o "$out/fuzz_parsers"
"$CC" "${flags[@]}" "$here/fuzz_forward.c" "${core[@]}" "$here/../engine.c" "$here/../worker.c" \
  "$here/../io_epoll.c" "$here/../io_uring.c" "$here/../io_errqueue.c" \
  "$here/../srtp_shim.c" "$here/../srtp_cm.c" -o "$out/fuzz_forward"
# The lean SRTP transform needs OpenSSL (as the extension's build does): built
# only where its headers are.
if echo '#include <openssl/evp.h>' | "$CC" -E -x c - >/dev/null 2>&1; then
  "$CC" "${flags[@]}" -DMF_HAVE_OPENSSL=1 "$here/fuzz_srtp_cm.c" "$here/../srtp_cm.c" \
    "$here/../alloc.c" -lcrypto -o "$out/fuzz_srtp_cm"
fi
echo "$out"
