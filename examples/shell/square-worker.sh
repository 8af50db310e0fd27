#!/bin/sh
# A TTG worker in POSIX sh, speaking the worker protocol (docs/kernels.md)
# with no library: the square of each parameter.
#   ttgctl submit --kernel exec --arg program=examples/shell/square-worker.sh --arg mode=worker --params 100
read -r hello || exit 0                 # {"type":"hello","protocol":1,"run_id":"…"}
case "$hello" in *'"protocol":1'*) ;; *) echo '{"type":"error","error":"speaks protocol 1 only"}'; exit 2 ;; esac
echo '{"type":"ready","protocol":1}'
while read -r line; do                  # {"type":"chunk","chunk":7,"attempt":1,"start":700,"end":800}
  chunk=${line#*\"chunk\":}; chunk=${chunk%%[,\}]*}
  p=${line#*\"start\":}; p=${p%%[,\}]*}
  end=${line#*\"end\":}; end=${end%%[,\}]*}
  values=""
  while [ "$p" -lt "$end" ]; do
    values="$values${values:+,}$((p * p))"
    p=$((p + 1))
  done
  echo "{\"type\":\"result\",\"chunk\":$chunk,\"values\":[$values]}"
done
