# Grouped bar chart of costs relative to a reference allocator, one group per
# workload and one bar per allocator, drawn from 1 (the reference) up or down
# on a log scale. Writes OUTBASE.png (pngcairo) and OUTBASE.svg.
#
# bench/report.py runs it as
#   gnuplot -e "datafile='time.dat'; outbase='time'; charttitle='...';
#               ylabel_text='...'; refname='mimalloc'; nbars=4; width=900;
#               height=520; ymin=0.25; ymax=4; bmargin=6" bench/plot.gp
# The data file: '#' comment lines, then a header line "workload NAME...",
# then one line per workload: its id and one ratio per allocator ('?' when
# missing).

if (!exists("datafile") || !exists("outbase")) {
    print "plot.gp: set datafile and outbase with -e"
    exit status 2
}
if (!exists("charttitle")) charttitle = ""
if (!exists("ylabel_text")) ylabel_text = "relative to the reference"
if (!exists("refname")) refname = "reference"
if (!exists("width")) width = 1000
if (!exists("height")) height = 520
if (!exists("ymin")) ymin = 0.25
if (!exists("ymax")) ymax = 4
header = system(sprintf("grep -v '^#' '%s' | head -n 1", datafile))
if (!exists("nbars")) nbars = words(header) - 1

# One colour per allocator, the same in every chart; BrainMM stands out.
color(name) = name eq "brainmm" ? 0xd62728 : \
              name eq "glibc" ? 0x7f7f7f : \
              name eq "mimalloc" ? 0x9467bd : \
              name eq "jemalloc" ? 0x1f77b4 : \
              name eq "tcmalloc" ? 0x2ca02c : 0xff7f0e

set datafile missing "?"
set datafile commentschars "#"
set key autotitle columnheader
# the title, then the key in one line under it, both above the plot
set tmargin 5
set label 2 charttitle at screen 0.5, screen 1 - 20.0 / height center font ",12"
set key at screen 0.5, screen 1 - 36.0 / height center top horizontal reverse Left samplen 1 width -1
set ylabel ylabel_text
set logscale y 2
set yrange [ymin:ymax]
set format y "%g"
set ytics nomirror
set mytics 2
set grid ytics mytics lc rgb "#dddddd" lw 1 dt 1
set xtics nomirror rotate by -35 scale 0 font ",10"
set tics front
set border 3
if (!exists("bmargin")) bmargin = 6
set bmargin bmargin
set xrange [-0.6:*]
set offsets 0, 0.6, 0, 0
set arrow 1 from graph 0, first 1 to graph 1, first 1 nohead lc rgb "black" lw 1.5 front

# bar j (2..nbars+1) of the group at x = row index
bw = 0.8 / nbars
xpos(j) = $0 + (j - 2 - (nbars - 1) / 2.0) * bw

set style fill solid 0.85 border lc rgb "#333333"
set terminal pngcairo size width, height font "sans,11" noenhanced
set output outbase . ".png"
plot for [j=2:nbars+1] datafile \
        using (xpos(j)):(1):(xpos(j) - bw / 2):(xpos(j) + bw / 2):(column(j) < 1 ? column(j) : 1):(column(j) < 1 ? 1 : column(j)) \
        with boxxyerror lc rgb color(word(header, j)) title word(header, j), \
     datafile using 0:(NaN):xtic(1) notitle with points, \
     NaN with lines lc rgb "black" lw 1.5 title sprintf("%s = 1", refname)

set terminal svg size width, height dynamic font "sans,11" noenhanced background "white"
set output outbase . ".svg"
replot
unset output
