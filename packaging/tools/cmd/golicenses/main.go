// Command golicenses lists the Go modules built into binaries, with the
// license each module's license file states, for a package's copyright
// file: one line per module, "PATH VERSION: LICENSE", sorted.
//
//	golicenses -modcache "$(go env GOMODCACHE)" bin/addond bin/addonctl
//
// A license it cannot name is printed as "unknown, see FILE" and makes it
// exit 1 with -strict, so that a new dependency is looked at.
package main

import (
	"debug/buildinfo"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unicode"
)

func main() {
	modcache := flag.String("modcache", "", "the module cache (go env GOMODCACHE)")
	strict := flag.Bool("strict", false, "exit 1 when a module's license cannot be named")
	prefix := flag.String("prefix", "", "text before each line")
	flag.Parse()
	if *modcache == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: golicenses -modcache DIR [-strict] [-prefix TEXT] BINARY...")
		os.Exit(2)
	}
	mods := map[string]string{} // "path version" → license
	unknown := false
	for _, bin := range flag.Args() {
		info, err := buildinfo.ReadFile(bin)
		if err != nil {
			fmt.Fprintln(os.Stderr, "golicenses:", err)
			os.Exit(1)
		}
		for _, dep := range info.Deps {
			path, version := dep.Path, dep.Version
			if dep.Replace != nil {
				path, version = dep.Replace.Path, dep.Replace.Version
			}
			key := path + " " + version
			if _, done := mods[key]; done {
				continue
			}
			lic := identify(filepath.Join(*modcache, escape(path)+"@"+escape(version)))
			if strings.HasPrefix(lic, "unknown") {
				unknown = true
			}
			mods[key] = lic
		}
	}
	keys := make([]string, 0, len(mods))
	for k := range mods {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("%s%s: %s\n", *prefix, k, mods[k])
	}
	if unknown && *strict {
		fmt.Fprintln(os.Stderr, "golicenses: a module's license could not be named (see \"unknown\" above)")
		os.Exit(1)
	}
}

// escape is the module cache's case encoding: "!" before each upper-case
// letter, which is written in lower case.
func escape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if unicode.IsUpper(r) {
			b.WriteByte('!')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

var licenseFiles = []string{"LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "COPYING", "LICENSE-MIT", "LICENSE.MIT"}

// identify names the license in dir's license file by the phrases each
// common license is recognized by.
func identify(dir string) string {
	for _, name := range licenseFiles {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		t := strings.Join(strings.Fields(string(data)), " ")
		switch {
		case strings.Contains(t, "Apache License") && strings.Contains(t, "Version 2.0"):
			return "Apache-2.0"
		case strings.Contains(t, "Mozilla Public License") && strings.Contains(t, "2.0"):
			return "MPL-2.0"
		case strings.Contains(t, "Permission is hereby granted, free of charge"):
			return "MIT"
		case strings.Contains(t, "Redistribution and use in source and binary forms"):
			if strings.Contains(t, "Neither the name") || strings.Contains(t, "names of its contributors") {
				return "BSD-3-Clause"
			}
			return "BSD-2-Clause"
		case strings.Contains(t, "Permission to use, copy, modify, and/or distribute"),
			strings.Contains(t, "Permission to use, copy, modify, and distribute"):
			return "ISC"
		}
		return "unknown, see " + name
	}
	return "unknown, no license file found in the module cache"
}
