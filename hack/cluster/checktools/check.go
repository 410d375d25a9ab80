// Package main is checktools: it reads the local cluster harness
// (hack/cluster/*.sh) with a real shell parser and reports every program a
// script runs or copies into an image that hack/cluster/install-deps.sh
// does not install, and every make target of the harness whose first script
// uses such a program before it has run install-deps.sh. It exists because
// `make demo` once failed on a fresh machine after a 30-minute build:
// images.sh copied mkfs.xfs, which only `make test`'s install step brought.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"mvdan.cc/sh/v3/syntax"
)

// essential are the commands of Debian's Essential packages (coreutils,
// util-linux, findutils, grep, sed, tar, gzip, hostname, libc-bin, bash,
// dash, debianutils, diffutils, bsdutils), present on every Debian machine,
// and the prerequisites the README names (Go, git, make).
var essential = set(`
	cat cp mv rm mkdir rmdir ln ls chmod chown sort uniq head tail cut tr wc seq
	sleep date basename dirname realpath readlink mktemp stat truncate sha256sum
	numfmt timeout env id nohup tee touch dd base64 nproc df du install sync od
	paste comm tac expr printf echo test true false yes md5sum
	find xargs grep sed tar gzip hostname ldd getent
	nsenter unshare setsid flock mountpoint blkid blockdev blkdiscard fsck lsblk
	findmnt wipefs logger diff cmp which bash sh dash apt-get
	go git make`)

// built are the programs build.sh makes into $BIN, which lib.sh puts first
// in PATH; Check verifies that build.sh still names each.
var built = set(`
	kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
	kubectl etcd csi-provisioner csi-resizer csi-snapshotter
	snapshot-controller flashpv pause e2e.test agnhost ginkgo`)

// builtins are shell builtins and keywords that parse as commands.
var builtins = set(`
	[ test : . source alias bg bind break builtin caller cd command compgen
	complete continue declare dirs disown echo enable eval exec exit export fc
	fg getopts hash help history jobs kill let local logout mapfile popd printf
	pushd pwd read readarray readonly return set shift shopt suspend times trap
	type typeset ulimit umask unalias unset wait`)

// runners are commands that run the rest of their arguments as a command:
// how many arguments to skip first, or -1 for "after --".
var runners = map[string]int{
	"nohup": 0, "exec": 0, "setsid": 0, "env": 0, "time": 0,
	"timeout": 1, "nsenter": -1, "unshare": -1, "xargs": 0,
	// the harness's own (lib.sh): wait_for SECONDS WHAT CMD..., start NAME
	// CMD..., on NODE CMD..., start_on NODE NAME CMD...
	"wait_for": 2, "start": 1, "on": 1, "start_on": 2,
}

// Problem is one finding, at a script's line.
type Problem struct {
	File string
	Line uint
	Msg  string
}

func (p Problem) String() string { return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg) }

// use is one program a script needs: run (a command) or copied (a path or
// a tool copied with its libraries into an image).
type use struct {
	name string
	line uint
	how  string
}

// script is what checktools learns from one file.
type script struct {
	name  string
	file  *syntax.File
	funcs map[string]*syntax.FuncDecl
}

// Check reads the harness under dir (the repository) and returns what is
// wrong with it.
func Check(dir string) ([]Problem, error) {
	cluster := filepath.Join(dir, "hack", "cluster")
	installed, err := installList(filepath.Join(cluster, "install-deps.sh"))
	if err != nil {
		return nil, err
	}
	paths, err := filepath.Glob(filepath.Join(cluster, "*.sh"))
	if err != nil {
		return nil, err
	}
	scripts := map[string]*script{}
	funcs := map[string]bool{}
	for _, p := range paths {
		s, err := parseScript(p)
		if err != nil {
			return nil, err
		}
		scripts[s.name] = s
		for f := range s.funcs {
			funcs[f] = true
		}
	}
	var problems []Problem
	buildScript, err := os.ReadFile(filepath.Join(cluster, "build.sh"))
	if err != nil {
		return nil, err
	}
	for _, b := range sortedKeys(built) {
		if !regexp.MustCompile(`(^|[^A-Za-z0-9.-])` + regexp.QuoteMeta(b) + `([^A-Za-z0-9.-]|$)`).Match(buildScript) {
			problems = append(problems, Problem{"hack/cluster/build.sh", 0, "does not build " + b + ", which checktools takes as built"})
		}
	}
	names := sortedKeys(scripts)
	for _, n := range names {
		for _, u := range uses(scripts[n].file, funcs) {
			if !installed[u.name] {
				problems = append(problems, Problem{"hack/cluster/" + n, u.line,
					fmt.Sprintf("%s %s, which install-deps.sh does not install: add TOOL:PACKAGE to its tools list", u.how, u.name)})
			}
		}
	}
	targets, err := makeTargets(filepath.Join(dir, "Makefile"))
	if err != nil {
		return nil, err
	}
	for _, t := range targets {
		s := scripts[t.script]
		if s == nil {
			problems = append(problems, Problem{"Makefile", t.line, fmt.Sprintf("target %s runs hack/cluster/%s, which does not exist", t.target, t.script)})
			continue
		}
		if u, ok := usesBeforeInstall(s, scripts, installed, map[string]bool{}); !ok && u.name != "" {
			problems = append(problems, Problem{"Makefile", t.line, fmt.Sprintf(
				"target %s: hack/cluster/%s %s %s (line %d) before it runs install-deps.sh", t.target, t.script, u.how, u.name, u.line)})
		}
	}
	return problems, nil
}

func parseScript(path string) (*script, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	file, err := syntax.NewParser(syntax.Variant(syntax.LangBash)).Parse(f, filepath.Base(path))
	if err != nil {
		return nil, err
	}
	s := &script{name: filepath.Base(path), file: file, funcs: map[string]*syntax.FuncDecl{}}
	syntax.Walk(file, func(n syntax.Node) bool {
		if fd, ok := n.(*syntax.FuncDecl); ok && fd.Name != nil {
			s.funcs[fd.Name.Value] = fd
		}
		return true
	})
	return s, nil
}

// installList reads the TOOL:PACKAGE words of the `tools` array.
func installList(path string) (map[string]bool, error) {
	s, err := parseScript(path)
	if err != nil {
		return nil, err
	}
	tools := map[string]bool{}
	syntax.Walk(s.file, func(n syntax.Node) bool {
		a, ok := n.(*syntax.Assign)
		if !ok || a.Name == nil || a.Name.Value != "tools" || a.Array == nil {
			return true
		}
		for _, e := range a.Array.Elems {
			if tool, _, ok := strings.Cut(e.Value.Lit(), ":"); ok {
				tools[tool] = true
			}
		}
		return false
	})
	if len(tools) == 0 {
		return nil, fmt.Errorf("%s: no tools=(TOOL:PACKAGE ...) list", path)
	}
	return tools, nil
}

// uses returns the programs that node runs or copies and that are neither
// builtins, the harness's functions, the project's own files nor essential.
func uses(node syntax.Node, funcs map[string]bool) []use {
	var out []use
	syntax.Walk(node, func(n syntax.Node) bool {
		if c, ok := n.(*syntax.CallExpr); ok {
			out = append(out, callUses(c.Args, funcs)...)
		}
		return true
	})
	return out
}

func callUses(args []*syntax.Word, funcs map[string]bool) []use {
	var out []use
	for len(args) > 0 {
		name, literal := wordText(args[0])
		line := args[0].Pos().Line()
		if !literal {
			return out // "$BIN/kubectl", "$HERE/up.sh", "$save": the project's or unknown
		}
		skip, isRunner := runners[name]
		switch {
		case name == "command" && len(args) > 1 && strings.HasPrefix(args[1].Lit(), "-v"):
			return out // a probe: the script copes when the tool is missing
		case name == "copy_with_libs":
			for _, a := range args[min(2, len(args)):] {
				if t, ok := wordText(a); ok && needed(t, funcs) {
					out = append(out, use{t, a.Pos().Line(), "copies"})
				}
			}
			return out
		case name == "cp":
			for _, a := range args[1:] {
				if t, ok := wordText(a); ok && systemPath(t) {
					out = append(out, use{t, a.Pos().Line(), "copies"})
				}
			}
			return out
		case (name == "sh" || name == "bash") && len(args) > 2 && strings.HasPrefix(args[1].Lit(), "-") && strings.Contains(args[1].Lit(), "c"):
			text, _ := wordText(args[2])
			if f, err := syntax.NewParser().Parse(strings.NewReader(text), ""); err == nil {
				for _, u := range uses(f, funcs) {
					u.line += line - 1
					out = append(out, u)
				}
			}
			return out
		case isRunner:
			if needed(name, funcs) {
				out = append(out, use{name, line, "runs"})
			}
			args = args[1:]
			args = skipArgs(args, skip)
			continue
		}
		if needed(name, funcs) {
			out = append(out, use{name, line, "runs"})
		}
		return out
	}
	return out
}

// skipArgs drops a runner's own options and n positional arguments, or
// everything up to "--" when n is -1.
func skipArgs(args []*syntax.Word, n int) []*syntax.Word {
	if n < 0 {
		for i, a := range args {
			if a.Lit() == "--" {
				return args[i+1:]
			}
		}
		return nil
	}
	for len(args) > 0 {
		a := args[0].Lit()
		if strings.HasPrefix(a, "-") || strings.Contains(a, "=") && !strings.HasPrefix(a, "/") {
			args = args[1:]
			continue
		}
		if n == 0 {
			break
		}
		args, n = args[1:], n-1
	}
	return args
}

func needed(name string, funcs map[string]bool) bool {
	if builtins[name] || funcs[name] || essential[name] || built[name] {
		return false
	}
	if strings.Contains(name, "/") {
		return systemPath(name)
	}
	return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]*$`).MatchString(name)
}

// systemPath: an absolute path to something a package provides.
func systemPath(p string) bool {
	for _, dir := range []string{"/bin/", "/sbin/", "/usr/", "/etc/", "/lib/"} {
		if strings.HasPrefix(p, dir) {
			return true
		}
	}
	return false
}

// wordText is a word's text as the shell would see it, and whether it is
// all literal; expansions become "X" in the text.
func wordText(w *syntax.Word) (string, bool) {
	var b strings.Builder
	literal := true
	var parts func([]syntax.WordPart, bool)
	parts = func(ps []syntax.WordPart, quoted bool) {
		for _, p := range ps {
			switch p := p.(type) {
			case *syntax.Lit:
				if quoted {
					b.WriteString(unescapeDouble(p.Value))
				} else {
					b.WriteString(p.Value)
				}
			case *syntax.SglQuoted:
				b.WriteString(p.Value)
			case *syntax.DblQuoted:
				parts(p.Parts, true)
			default:
				b.WriteString("X")
				literal = false
			}
		}
	}
	parts(w.Parts, false)
	return b.String(), literal
}

// unescapeDouble removes the backslashes a double-quoted string drops.
func unescapeDouble(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && strings.ContainsRune("$`\"\\\n", rune(s[i+1])) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// usesBeforeInstall walks a script's top-level statements in order and
// returns the first program outside the install list it needs before
// install-deps.sh has run (through it, or a script that runs it first).
func usesBeforeInstall(s *script, all map[string]*script, installed map[string]bool, seen map[string]bool) (use, bool) {
	if s.name == "install-deps.sh" {
		return use{}, true
	}
	if seen[s.name] {
		return use{}, false
	}
	seen[s.name] = true
	funcs := map[string]bool{}
	for _, o := range all {
		for f := range o.funcs {
			funcs[f] = true
		}
	}
	for _, st := range s.file.Stmts {
		if _, ok := st.Cmd.(*syntax.FuncDecl); ok {
			continue
		}
		if child := calledScript(st, all); child != nil {
			if u, ok := usesBeforeInstall(child, all, installed, seen); ok {
				return use{}, true
			} else if u.name != "" {
				return u, false
			}
		}
		for _, u := range stmtUses(st, s, all, funcs) {
			if !essential[u.name] {
				return u, false
			}
		}
	}
	return use{}, false
}

// stmtUses: what a statement needs, including the harness functions it calls.
func stmtUses(st *syntax.Stmt, s *script, all map[string]*script, funcs map[string]bool) []use {
	out := uses(st, funcs)
	syntax.Walk(st, func(n syntax.Node) bool {
		c, ok := n.(*syntax.CallExpr)
		if !ok || len(c.Args) == 0 {
			return true
		}
		name := c.Args[0].Lit()
		for _, o := range all {
			if fd := o.funcs[name]; fd != nil && (o == s || o.name == "lib.sh") {
				for _, u := range uses(fd.Body, funcs) {
					u.line = c.Args[0].Pos().Line()
					out = append(out, u)
				}
			}
		}
		return true
	})
	return out
}

// calledScript: the hack/cluster script a statement runs ("$HERE/up.sh").
func calledScript(st *syntax.Stmt, all map[string]*script) *script {
	c, ok := st.Cmd.(*syntax.CallExpr)
	if !ok || len(c.Args) == 0 {
		return nil
	}
	text, _ := wordText(c.Args[0])
	if strings.HasSuffix(text, ".sh") {
		return all[filepath.Base(text)]
	}
	return nil
}

type target struct {
	target, script string
	line           uint
}

// makeTargets: the first hack/cluster script each make target runs.
func makeTargets(path string) ([]target, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []target
	current, found := "", false
	scriptRe := regexp.MustCompile(`hack/cluster/([A-Za-z0-9_.-]+\.sh)`)
	for i, line := range strings.Split(string(b), "\n") {
		if m := regexp.MustCompile(`^([A-Za-z0-9_.-]+):`).FindStringSubmatch(line); m != nil {
			current, found = m[1], false
			continue
		}
		if !strings.HasPrefix(line, "\t") || current == "" || found {
			continue
		}
		if m := scriptRe.FindStringSubmatch(line); m != nil {
			out = append(out, target{current, m[1], uint(i + 1)})
			found = true
		}
	}
	return out, nil
}

func set(words string) map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(words) {
		m[w] = true
	}
	return m
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
