package docs

import (
	"fmt"
	"os"
	"regexp"
	"strings"
)

// row is one row of a Markdown table: its cells, trimmed, pipes unescaped.
type row []string

// tables returns the rows (without header and separator) of the tables
// under each `## ` heading of a Markdown file, by heading.
func tables(path string) (map[string][]row, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string][]row{}
	heading := ""
	inTable := false
	for i, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "## "):
			heading = strings.TrimSpace(strings.TrimPrefix(line, "## "))
			if _, dup := out[heading]; dup {
				return nil, fmt.Errorf("%s:%d: heading %q twice", path, i+1, heading)
			}
			out[heading] = nil
			inTable = false
		case strings.HasPrefix(line, "|"):
			if !inTable { // the header; the separator follows
				inTable = true
				continue
			}
			cells := splitRow(line)
			if isSeparator(cells) {
				continue
			}
			out[heading] = append(out[heading], cells)
		default:
			inTable = false
		}
	}
	return out, nil
}

func splitRow(line string) row {
	line = strings.TrimSpace(line)
	line = strings.TrimPrefix(line, "|")
	line = strings.TrimSuffix(line, "|")
	var cells row
	var cur strings.Builder
	for i := 0; i < len(line); i++ {
		switch {
		case line[i] == '\\' && i+1 < len(line) && line[i+1] == '|':
			cur.WriteByte('|')
			i++
		case line[i] == '|':
			cells = append(cells, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(line[i])
		}
	}
	return append(cells, strings.TrimSpace(cur.String()))
}

func isSeparator(cells row) bool {
	for _, c := range cells {
		if strings.Trim(c, "-: ") != "" {
			return false
		}
	}
	return true
}

var codeRE = regexp.MustCompile("`([^`]*)`")

// codes returns the backticked spans of a cell.
func codes(cell string) []string {
	var out []string
	for _, m := range codeRE.FindAllStringSubmatch(cell, -1) {
		out = append(out, m[1])
	}
	return out
}
