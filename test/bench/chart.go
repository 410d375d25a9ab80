package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// writeChart draws the volume ÷ raw throughput ratios (ASCII only: the
// built-in font has no ÷) as grouped bars, one
// group per case, with whiskers from the lowest to the highest round and
// lines at 1.0 and at the 0.95 target.
func writeChart(path string, data []dataResult) error {
	const (
		w, h                 = 960, 420
		left, right, top, bt = 50, 20, 40, 60
		yMax                 = 1.2
	)
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	colors := map[string]color.RGBA{
		"ext4":  {0x1f, 0x77, 0xb4, 0xff},
		"xfs":   {0xff, 0x7f, 0x0e, 0xff},
		"block": {0x2c, 0xa0, 0x2c, 0xff},
	}
	grey := color.RGBA{0x99, 0x99, 0x99, 0xff}
	red := color.RGBA{0xd6, 0x27, 0x28, 0xff}
	black := color.RGBA{0, 0, 0, 0xff}
	plotH := float64(h - top - bt)
	y := func(v float64) int { return top + int(plotH*(1-min(v, yMax)/yMax)) }

	// Axis, grid and target lines.
	for v := 0.0; v <= yMax+1e-9; v += 0.2 {
		hline(img, left, w-right, y(v), color.RGBA{0xe5, 0xe5, 0xe5, 0xff})
		label(img, 8, y(v)+4, fmt.Sprintf("%.1f", v), black)
	}
	hline(img, left, w-right, y(1), grey)
	dashed(img, left, w-right, y(0.95), red)
	vline(img, left, top, h-bt, black)
	hline(img, left, w-right, h-bt, black)

	group := float64(w-left-right) / float64(len(data))
	bar := int(group / float64(len(volumeTargets)+1))
	for i, d := range data {
		x0 := left + int(group*float64(i)) + bar/2
		for j, t := range volumeTargets {
			s, ok := d.Ratio[t]
			if !ok {
				continue
			}
			x := x0 + j*bar
			fill(img, image.Rect(x+1, y(s.Median), x+bar-1, h-bt), colors[t])
			mid := x + bar/2
			vline(img, mid, y(s.Max), y(s.Min), black)
			hline(img, mid-3, mid+4, y(s.Max), black)
			hline(img, mid-3, mid+4, y(s.Min), black)
		}
		label(img, x0, h-bt+16, d.Case.Name, black)
	}
	label(img, left, 20, "flashpv volume / raw file on the pool's filesystem, throughput (median of rounds; whiskers: lowest, highest)", black)
	for j, t := range volumeTargets {
		x := left + 20 + j*90
		fill(img, image.Rect(x, h-22, x+12, h-10), colors[t])
		label(img, x+16, h-11, t, black)
	}
	x := left + 20 + len(volumeTargets)*90
	dashed(img, x, x+24, h-16, red)
	label(img, x+30, h-11, "target 0.95", red)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	draw.Draw(img, r, &image.Uniform{c}, image.Point{}, draw.Src)
}

func hline(img *image.RGBA, x0, x1, y int, c color.Color) {
	for x := x0; x < x1; x++ {
		img.Set(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.Color) {
	for y := y0; y <= y1; y++ {
		img.Set(x, y, c)
	}
}

func dashed(img *image.RGBA, x0, x1, y int, c color.Color) {
	for x := x0; x < x1; x++ {
		if (x/6)%2 == 0 {
			img.Set(x, y, c)
		}
	}
}

func label(img *image.RGBA, x, y int, s string, c color.Color) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}
