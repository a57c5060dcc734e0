# Sourced by benchmark scripts: `peak_rss PID` waits for PID to end while sampling /proc/PID/status
# every 20 ms, and prints its peak RssAnon and RssFile in kB ("ANON FILE").
peak_rss() {
  local pid=$1 anon=0 file=0 a f
  while kill -0 "$pid" 2>/dev/null; do
    a=$(awk '/^RssAnon/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    f=$(awk '/^RssFile/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${a:-0}" -gt "$anon" ] && anon=$a
    [ "${f:-0}" -gt "$file" ] && file=$f
    sleep 0.02
  done
  echo "$anon $file"
}
