# move16.gp: bmm_move16 against memmove, from `move16 --data FILE`.
#   gnuplot -e "datafile='move16.dat'; outfile='move16.png'" bench/move16.gp
# Top: GB/s against size (log-log), one column per layout; bottom: the ratio.
if (!exists("datafile")) datafile = 'move16.dat'
if (!exists("outfile")) outfile = 'move16.png'
set terminal pngcairo noenhanced size 1500,800
set output outfile
set multiplot layout 2,3 title "bmm_move16 vs memmove, 16-byte aligned"
set logscale x 2
set xrange [48:100663296]
set xtics ("64" 64, "1K" 1024, "16K" 16384, "256K" 262144, "4M" 4194304, "64M" 67108864)
set grid
do for [i=0:2] {
  set title word("copy down up", i+1)
  set logscale y 2
  set ylabel "GB/s"
  plot datafile index i using 1:2 with linespoints lw 2 title "memmove", \
       datafile index i using 1:3 with linespoints lw 2 title "bmm_move16"
}
do for [i=0:2] {
  set title word("copy down up", i+1)." ratio"
  unset logscale y
  set ylabel "bmm_move16 / memmove"
  plot datafile index i using 1:4 with linespoints lw 2 notitle, 1 notitle dt 2
}
unset multiplot
