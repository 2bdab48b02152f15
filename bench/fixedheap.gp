# fixedheap.gp: the fixed-heap replay of bench/extras.sh, one group of bars
# per (trace, heap size), one bar per heap kind.
#   gnuplot -e "datafile='fixedheap.dat'; outfile='fixedheap.png'" bench/fixedheap.gp
# The data file (written by extras.sh) has a header line, then one row per
# (trace, heap size): label, then the peak live bytes before the first
# failure as % of the heap for firstfit, bmm-fixed and bmm-rheap, then the
# % of the trace's operations each replayed. A missing run is "?".
# Top: how full each heap got; bottom: how far into the trace it got.
if (!exists("datafile")) datafile = 'fixedheap.dat'
if (!exists("outfile")) outfile = 'fixedheap.png'
set terminal pngcairo noenhanced size 1400,900
set output outfile
set datafile missing "?"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key outside right top vertical
set xtics rotate by -30 nomirror
set yrange [0:105]
set multiplot layout 2,1 title "Fixed heaps: the trace replayed into a heap of (factor x its peak live bytes) until the first failed allocation"
set title "peak live bytes before the first failure, % of the heap (higher: the heap used more of its memory)"
set ylabel "% of heap"
plot for [i=2:4] datafile using i:xtic(1) title columnheader(i)
set title "operations of the trace replayed before the first failure (100: completed)"
set ylabel "% of operations"
plot for [i=5:7] datafile using i:xtic(1) title columnheader(i)
unset multiplot
