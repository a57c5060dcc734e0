# median: the median of the numbers on stdin (separated by spaces or newlines; the mean of the two
# middle ones for an even count). Sourced by the benchmarks that report medians of interleaved rounds.
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
