# Sourced by benchmark scripts: `peak_rss PID` waits for PID to end while sampling /proc/PID/status
# every 20 ms, and prints its peak RssAnon and RssFile in kB ("ANON FILE").
#
# Bash builtins only: a sampler that started `awk` and `sleep` at every tick took a sizeable share
# of a core, which on a 2-core machine came out of the measured program's second thread.
peak_rss() {
  local pid=$1 anon=0 file=0 key val tick
  # A pipe this shell holds both ends of: `read -t` on it waits out its timeout (a sleep without a
  # new process).
  exec {tick}<> <(:)
  while kill -0 "$pid" 2>/dev/null; do
    while read -r key val _; do
      case $key in
        RssAnon:) [ "$val" -gt "$anon" ] && anon=$val ;;
        RssFile:) [ "$val" -gt "$file" ] && file=$val ;;
      esac
    done < "/proc/$pid/status" 2>/dev/null
    read -r -t 0.02 -u "$tick" _ || true
  done
  exec {tick}>&-
  echo "$anon $file"
}
