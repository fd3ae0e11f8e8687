// Command cobraman writes a man page for a built cobra program by walking
// its help output: `PROG help`, then `PROG help SUB...` for every
// subcommand the help lists. The program's packages stay untouched (a
// package main cannot be imported, and a hidden command would ship in the
// binary): what the man page says is exactly what `--help` says.
//
//	cobraman -section 1 -source "addond 1.2.3" -date 2026-01-02 \
//	    -see-also 'addond(8)' -o addonctl.1 bin/addonctl
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

func main() {
	section := flag.String("section", "1", "manual section")
	source := flag.String("source", "", "the page's source (footer), e.g. \"addond 1.2.3\"")
	manual := flag.String("manual", "", "the manual's title (header)")
	date := flag.String("date", "", "the page's date (footer)")
	seeAlso := flag.String("see-also", "", "comma-separated pages for SEE ALSO, e.g. \"addond(8),systemctl(1)\"")
	out := flag.String("o", "", "output file (default: stdout)")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: cobraman [flags] PROGRAM")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	prog := flag.Arg(0)
	root, err := walk(helpOf(prog), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cobraman:", err)
		os.Exit(1)
	}
	page := render(root, page{
		name: filepath.Base(prog), section: *section, source: *source, manual: *manual,
		date: *date, seeAlso: splitList(*seeAlso),
	})
	if *out == "" {
		os.Stdout.WriteString(page)
		return
	}
	if err := os.WriteFile(*out, []byte(page), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "cobraman:", err)
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// helper returns the help text of the command at path.
type helper func(path []string) (string, error)

func helpOf(prog string) helper {
	return func(path []string) (string, error) {
		cmd := exec.Command(prog, append([]string{"help"}, path...)...)
		cmd.Env = append(os.Environ(), "NO_COLOR=1", "COLUMNS=80")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("%s help %s: %v\n%s", prog, strings.Join(path, " "), err, stderr.String())
		}
		return stdout.String(), nil
	}
}

// command is one command's help, parsed.
type command struct {
	path        []string // subcommand names below the root
	description []string // paragraphs (Long, else Short)
	short       string   // from the parent's command list
	usage       []string // usage lines
	sections    []section
	children    []*command
}

// section is a help section other than Usage: a list of commands or
// flags ("Flags:", "Global Flags:", "Operator commands:") or free text
// ("Examples:", "Aliases:").
type section struct {
	title    string
	commands []entry // name, short
	flags    []entry // spec, description
	text     []string
}

type entry struct{ name, text string }

// walk parses the help of the command at path and of every command below
// it. "help" itself is left out: it is how the page was made.
func walk(help helper, path []string) (*command, error) {
	text, err := help(path)
	if err != nil {
		return nil, err
	}
	c, err := parse(text)
	if err != nil {
		return nil, fmt.Errorf("help %s: %w", strings.Join(path, " "), err)
	}
	c.path = path
	for _, s := range c.sections {
		for _, e := range s.commands {
			if e.name == "help" {
				continue
			}
			sub, err := walk(help, append(append([]string(nil), path...), e.name))
			if err != nil {
				return nil, err
			}
			sub.short = e.text
			c.children = append(c.children, sub)
		}
	}
	return c, nil
}

var (
	headingRe = regexp.MustCompile(`^[A-Z][A-Za-z ]*:$`)
	// A flag line: "  -h, --help   text" or "      --out string   text".
	flagRe = regexp.MustCompile(`^\s+(-\S.*?)(?:\s{2,}(.*))?$`)
	// A command line: "  name   short".
	commandRe = regexp.MustCompile(`^  (\S+)\s{2,}(.*)$`)
)

// parse reads cobra's default help template: the description, then
// "Usage:" and further sections, each a heading line ending in ":" and
// indented lines, and a closing `Use "… --help" …` line.
func parse(text string) (*command, error) {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	c := &command{}
	i := 0
	var para []string
	for ; i < len(lines) && lines[i] != "Usage:"; i++ {
		if strings.TrimSpace(lines[i]) == "" {
			if len(para) > 0 {
				c.description = append(c.description, strings.Join(para, "\n"))
				para = nil
			}
			continue
		}
		para = append(para, lines[i])
	}
	if len(para) > 0 {
		c.description = append(c.description, strings.Join(para, "\n"))
	}
	if i == len(lines) {
		return nil, errors.New("no \"Usage:\" section (not cobra's help template?)")
	}
	var cur *section
	for ; i < len(lines); i++ {
		line := lines[i]
		switch {
		case strings.TrimSpace(line) == "":
			continue
		case headingRe.MatchString(line):
			c.sections = append(c.sections, section{title: strings.TrimSuffix(line, ":")})
			cur = &c.sections[len(c.sections)-1]
			continue
		case strings.HasPrefix(line, "Use \""):
			continue // "Use "PROG [command] --help" for more information…"
		case cur == nil || !strings.HasPrefix(line, " "):
			return nil, fmt.Errorf("unexpected line %q", line)
		}
		switch {
		case cur.title == "Usage":
			c.usage = append(c.usage, strings.TrimSpace(line))
		case strings.HasSuffix(cur.title, "Flags"):
			if m := flagRe.FindStringSubmatch(line); m != nil {
				cur.flags = append(cur.flags, entry{strings.TrimSpace(m[1]), m[2]})
			} else if n := len(cur.flags); n > 0 {
				// A flag's usage continued on the next line.
				cur.flags[n-1].text += "\n" + strings.TrimSpace(line)
			} else {
				return nil, fmt.Errorf("unexpected line %q in %s", line, cur.title)
			}
		case strings.HasSuffix(strings.ToLower(cur.title), "commands"):
			m := commandRe.FindStringSubmatch(line)
			if m == nil {
				return nil, fmt.Errorf("unexpected line %q in %s", line, cur.title)
			}
			cur.commands = append(cur.commands, entry{m[1], m[2]})
		default:
			cur.text = append(cur.text, strings.TrimPrefix(line, "  "))
		}
	}
	c.sections = deleteSection(c.sections, "Usage")
	return c, nil
}

func deleteSection(ss []section, title string) []section {
	out := ss[:0]
	for _, s := range ss {
		if s.title != title {
			out = append(out, s)
		}
	}
	return out
}

type page struct {
	name, section, source, manual, date string
	seeAlso                             []string
}

// render writes the page: NAME, SYNOPSIS and DESCRIPTION from the root's
// help, then COMMANDS with every subcommand (depth first) — its usage,
// description and flags — then the root's flags and SEE ALSO.
func render(root *command, p page) string {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH %s %s %s %s %s\n", quote(strings.ToUpper(p.name)), p.section, quote(p.date), quote(p.source), quote(p.manual))
	b.WriteString(".SH NAME\n")
	summary := root.short
	if summary == "" && len(root.description) > 0 {
		summary = strings.ReplaceAll(root.description[0], "\n", " ")
	}
	fmt.Fprintf(&b, "%s \\- %s\n", escape(p.name), escape(summary))
	b.WriteString(".SH SYNOPSIS\n")
	usage(&b, root.usage)
	if len(root.description) > 1 {
		b.WriteString(".SH DESCRIPTION\n")
		paragraphs(&b, root.description[1:])
	}
	var all []*command
	var collect func(c *command)
	collect = func(c *command) {
		for _, sub := range c.children {
			all = append(all, sub)
			collect(sub)
		}
	}
	collect(root)
	if len(all) > 0 {
		b.WriteString(".SH COMMANDS\n")
		for _, s := range root.sections {
			if len(s.commands) == 0 {
				continue
			}
			fmt.Fprintf(&b, ".PP\n%s:\n.RS\n", escape(s.title))
			for _, e := range s.commands {
				if e.name != "help" {
					fmt.Fprintf(&b, ".TP\n.B %s\n%s\n", escape(e.name), escape(e.text))
				}
			}
			b.WriteString(".RE\n")
		}
		for _, c := range all {
			fmt.Fprintf(&b, ".SS %s\n", quote(p.name+" "+strings.Join(c.path, " ")))
			usage(&b, c.usage)
			desc := c.description
			if len(desc) == 1 && desc[0] == c.short {
				desc = nil // the short summary is in the list above
			} else if len(desc) == 0 && c.short != "" {
				desc = []string{c.short}
			}
			paragraphs(&b, desc)
			sections(&b, c.sections, false)
		}
	}
	if hasFlags(root.sections) {
		b.WriteString(".SH OPTIONS\n")
		sections(&b, root.sections, true)
	}
	if len(p.seeAlso) > 0 {
		b.WriteString(".SH SEE ALSO\n")
		for i, ref := range p.seeAlso {
			name, sec, ok := strings.Cut(strings.TrimSuffix(ref, ")"), "(")
			sep := ","
			if i == len(p.seeAlso)-1 {
				sep = ""
			}
			if ok {
				fmt.Fprintf(&b, ".BR %s (%s)%s\n", escape(name), escape(sec), sep)
			} else {
				fmt.Fprintf(&b, "%s%s\n", escape(ref), sep)
			}
		}
	}
	return b.String()
}

func hasFlags(ss []section) bool {
	for _, s := range ss {
		if len(s.flags) > 0 {
			return true
		}
	}
	return false
}

// usage writes usage lines filled (long ones wrap), one per line.
func usage(b *strings.Builder, lines []string) {
	for i, l := range lines {
		if i > 0 {
			b.WriteString(".br\n")
		}
		fmt.Fprintf(b, "\\fB%s\\fR\n", escape(l))
	}
}

// paragraphs writes description paragraphs: filled, but an indented one
// (an example command) as it is.
func paragraphs(b *strings.Builder, ps []string) {
	for _, p := range ps {
		if indented(p) {
			fmt.Fprintf(b, ".PP\n.RS\n.nf\n%s\n.fi\n.RE\n", escape(dedent(p)))
			continue
		}
		fmt.Fprintf(b, ".PP\n%s\n", escape(p))
	}
}

func indented(p string) bool {
	for _, l := range strings.Split(p, "\n") {
		if !strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "\t") {
			return false
		}
	}
	return true
}

func dedent(p string) string {
	lines := strings.Split(p, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimLeft(l, " \t")
	}
	return strings.Join(lines, "\n")
}

// sections writes flag lists (and free-text sections such as Examples);
// the root's command lists are written under COMMANDS.
func sections(b *strings.Builder, ss []section, root bool) {
	for _, s := range ss {
		switch {
		case len(s.flags) > 0 && (root || len(s.flags) > 1 || s.flags[0].name != "-h, --help"):
			if !root || len(ss) > 1 {
				fmt.Fprintf(b, ".PP\n%s:\n", escape(s.title))
			}
			b.WriteString(".RS\n")
			for _, f := range s.flags {
				if !root && f.name == "-h, --help" {
					continue // every command has it: the root's OPTIONS say so
				}
				fmt.Fprintf(b, ".TP\n.B %s\n%s\n", escape(f.name), escape(f.text))
			}
			b.WriteString(".RE\n")
		case len(s.text) > 0:
			fmt.Fprintf(b, ".PP\n%s:\n.RS\n.nf\n%s\n.fi\n.RE\n", escape(s.title), escape(strings.Join(s.text, "\n")))
		}
	}
}

// escape makes text safe as roff input: backslashes, hyphens (so that
// flags render as ASCII minus signs and can be searched for), and lines
// that would start with a control character.
func escape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}

func quote(s string) string {
	return `"` + strings.ReplaceAll(escape(s), `"`, `\(dq`) + `"`
}
