package docs

import (
	"regexp"
	"strings"
)

// selector is one metric a PromQL expression names, with the label names
// of its matchers.
type selector struct {
	Metric string
	Labels []string
}

var (
	stringRE   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	rangeRE    = regexp.MustCompile(`\[[^\]]*\]`)
	groupingRE = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	variableRE = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
	tokenRE    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*(\s*\{[^}]*\})?(\s*\()?`)
	matcherRE  = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)`)
	keywords   = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true}
)

// selectors returns the metrics a PromQL expression (a Grafana query
// may hold $variables) selects. It is no PromQL parser, only enough for
// the expressions of deploy/monitoring: strings, ranges, grouping clauses
// and variables are dropped, then every identifier not followed by "(" is
// a metric, with the label names of the matchers after it.
func selectors(expr string) []selector {
	e := variableRE.ReplaceAllString(expr, "0")
	// Keep the label names of matchers, drop their values.
	e = stringRE.ReplaceAllString(e, `""`)
	e = rangeRE.ReplaceAllString(e, "")
	e = groupingRE.ReplaceAllString(e, "")
	var out []selector
	for _, m := range tokenRE.FindAllStringSubmatchIndex(e, -1) {
		tok := e[m[0]:m[1]]
		if m[4] >= 0 { // a function call
			continue
		}
		if m[0] > 0 && strings.ContainsAny(e[m[0]-1:m[0]], "0123456789.") {
			continue // the unit of a number or a duration: 5m, 1e3
		}
		name := tok
		var labels []string
		if i := strings.Index(tok, "{"); i >= 0 {
			name = strings.TrimSpace(tok[:i])
			for _, lm := range matcherRE.FindAllStringSubmatch(tok[i:], -1) {
				labels = append(labels, lm[1])
			}
		}
		if keywords[strings.ToLower(name)] {
			continue
		}
		out = append(out, selector{Metric: name, Labels: labels})
	}
	return out
}
