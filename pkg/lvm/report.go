package lvm

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// The report columns read. segtype and stripes are segment fields: lvs then
// prints one row per segment, and an LV grown more than once has several.
const (
	vgFields = "vg_name,vg_size,vg_free,vg_extent_size,pv_count,vg_tags"
	lvFields = "lv_name,vg_name,lv_path,lv_size,lv_attr,lv_tags,pool_lv,segtype,stripes,data_percent,metadata_percent,zero"
)

// report runs vgs or lvs with a JSON report of exact byte counts; --binary
// makes the zero column 1, 0 or -1 (not applicable) instead of words.
func (r *Runner) report(ctx context.Context, into *report, cmd, fields, target string) error {
	out, err := r.run(ctx, cmd, "--reportformat", "json", "--units", "b", "--nosuffix", "--binary", "-o", fields, target)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, into); err != nil {
		return fmt.Errorf("lvm %s %s: unreadable report: %w", cmd, target, err)
	}
	return nil
}

// report is the JSON of vgs and lvs:
//
//	{"report": [{"lv": [{"lv_name":"lv1", "lv_size":"8388608", ...}]}]}
type report struct {
	Report []struct {
		VG []row `json:"vg"`
		LV []row `json:"lv"`
	} `json:"report"`
}

type row map[string]value

// value is one cell. The json format prints every value as a string, empty
// when there is none; json_std (LVM 2.03.17 on) prints numbers as numbers.
type value string

func (v *value) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		err := json.Unmarshal(b, &s)
		*v = value(s)
		return err
	}
	if string(b) == "null" {
		b = nil
	}
	*v = value(b)
	return nil
}

// cells reads typed cells of a row, keeping the first error.
type cells struct {
	r   row
	err error
}

func (c *cells) str(k string) string { return string(c.r[k]) }

func (c *cells) int(k string) int64 {
	s := c.str(k)
	if s == "" {
		return 0
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil && c.err == nil {
		c.err = fmt.Errorf("%s: %w", k, err)
	}
	return n
}

func (c *cells) float(k string) float64 {
	s := c.str(k)
	if s == "" {
		return 0
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil && c.err == nil {
		c.err = fmt.Errorf("%s: %w", k, err)
	}
	return f
}

// tags splits a tag list: comma-separated, and commas are not allowed in tags.
func (c *cells) tags(k string) []string {
	if s := c.str(k); s != "" {
		return strings.Split(s, ",")
	}
	return nil
}

func (rep *report) vgs() ([]VG, error) {
	var vgs []VG
	for _, part := range rep.Report {
		for _, r := range part.VG {
			c := cells{r: r}
			vg := VG{
				Name:       c.str("vg_name"),
				Size:       c.int("vg_size"),
				Free:       c.int("vg_free"),
				ExtentSize: c.int("vg_extent_size"),
				PVCount:    int(c.int("pv_count")),
				Tags:       c.tags("vg_tags"),
			}
			if c.err != nil {
				return nil, fmt.Errorf("volume group %s: %w", vg.Name, c.err)
			}
			vgs = append(vgs, vg)
		}
	}
	return vgs, nil
}

// lvs reads LVs, one per LV: of the rows of an LV's segments it keeps the
// first.
func (rep *report) lvs() ([]LV, error) {
	var lvs []LV
	seen := map[string]bool{}
	for _, part := range rep.Report {
		for _, r := range part.LV {
			c := cells{r: r}
			l := LV{
				Name:            c.str("lv_name"),
				VG:              c.str("vg_name"),
				Path:            c.str("lv_path"),
				Size:            c.int("lv_size"),
				Attr:            c.str("lv_attr"),
				Tags:            c.tags("lv_tags"),
				Pool:            c.str("pool_lv"),
				SegType:         c.str("segtype"),
				Stripes:         int(c.int("stripes")),
				DataPercent:     c.float("data_percent"),
				MetadataPercent: c.float("metadata_percent"),
				Zero:            c.str("zero") == "1",
			}
			if c.err != nil {
				return nil, fmt.Errorf("logical volume %s/%s: %w", l.VG, l.Name, c.err)
			}
			// The fifth attribute is the state: (a)ctive, or -, X (unknown),
			// s (suspended)...
			l.Active = attrChar(l.Attr, 4) == 'a'
			if key := l.VG + "/" + l.Name; !seen[key] {
				seen[key] = true
				lvs = append(lvs, l)
			}
		}
	}
	return lvs, nil
}
