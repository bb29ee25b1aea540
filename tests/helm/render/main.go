// Command render renders a Helm chart directory the way `helm template` does, without Helm.
//
// Helm cannot be installed on the build machines (no network), but the pieces Helm's template
// engine is made of are Debian packages: Go's text/template, sprig (the function library Helm
// uses), yaml.v2 (what sigs.k8s.io/yaml wraps), and gojsonschema (what Helm 3 validates
// values.schema.json with). This program wires them together the way helm.sh/helm/v3/pkg/engine
// and pkg/action do, so the chart tests exercise the real template language and function set.
// Known deviations from Helm are listed in helm/README.md; keep that list in sync with this file.
//
//	render --chart DIR [-f values.yaml]... [--name N] [--namespace NS] [--upgrade]
//	       [--kube-version v1.29.0] [--api-versions group/version]... [--show-values]
//	       [--notes-out FILE]
//
// Exit status: 0 rendered; 1 the chart failed to load, validate or render (message on stderr,
// in Helm's wording where Helm has one); 2 bad usage.
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"

	// Debian ships these v3 modules at their GOPATH paths without the /v3 suffix; the program is
	// built in GOPATH mode (GO111MODULE=off, GOPATH=/usr/share/gocode) from this directory.
	"github.com/Masterminds/semver"
	"github.com/Masterminds/sprig"
	"github.com/xeipuuv/gojsonschema"
	yaml2 "gopkg.in/yaml.v2"
)

// ---------------------------------------------------------------------------------------------
// YAML the way Helm does it: sigs.k8s.io/yaml converts YAML to JSON and decodes that with
// encoding/json, so every number in .Values is a float64 and every map is map[string]interface{}.
// toYaml goes the other way: JSON-encode, decode as YAML (yaml.v2), re-encode (sorted keys).

// yamlToJSONValue decodes YAML bytes into JSON-shaped Go values, like sigs.k8s.io/yaml.Unmarshal.
func yamlToJSONValue(data []byte, out interface{}) error {
	var raw interface{}
	if err := yaml2.Unmarshal(data, &raw); err != nil {
		return err
	}
	converted, err := jsonify(raw)
	if err != nil {
		return err
	}
	j, err := json.Marshal(converted)
	if err != nil {
		return err
	}
	return json.Unmarshal(j, out)
}

// jsonify turns yaml.v2's map[interface{}]interface{} into map[string]interface{}.
func jsonify(v interface{}) (interface{}, error) {
	switch t := v.(type) {
	case map[interface{}]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, val := range t {
			c, err := jsonify(val)
			if err != nil {
				return nil, err
			}
			m[fmt.Sprint(k)] = c
		}
		return m, nil
	case []interface{}:
		out := make([]interface{}, len(t))
		for i, val := range t {
			c, err := jsonify(val)
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	default:
		return v, nil
	}
}

// marshalYAML is sigs.k8s.io/yaml.Marshal: JSON first (honours json tags), then YAML.
func marshalYAML(v interface{}) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var obj interface{}
	if err := yaml2.Unmarshal(j, &obj); err != nil {
		return nil, err
	}
	return yaml2.Marshal(obj)
}

// ---------------------------------------------------------------------------------------------
// Built-in objects.

// Metadata mirrors helm.sh/helm/v3/pkg/chart.Metadata, so templates see .Chart.AppVersion etc.
type Metadata struct {
	Name         string            `json:"name,omitempty"`
	Home         string            `json:"home,omitempty"`
	Sources      []string          `json:"sources,omitempty"`
	Version      string            `json:"version,omitempty"`
	Description  string            `json:"description,omitempty"`
	Keywords     []string          `json:"keywords,omitempty"`
	Maintainers  []interface{}     `json:"maintainers,omitempty"`
	Icon         string            `json:"icon,omitempty"`
	APIVersion   string            `json:"apiVersion,omitempty"`
	Condition    string            `json:"condition,omitempty"`
	Tags         string            `json:"tags,omitempty"`
	AppVersion   string            `json:"appVersion,omitempty"`
	Deprecated   bool              `json:"deprecated,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	KubeVersion  string            `json:"kubeVersion,omitempty"`
	Dependencies []interface{}     `json:"dependencies,omitempty"`
	Type         string            `json:"type,omitempty"`
}

// Release mirrors the .Release object of helm template.
type Release struct {
	Name      string
	Namespace string
	Revision  int
	IsUpgrade bool
	IsInstall bool
	Service   string
}

// VersionSet mirrors chartutil.VersionSet.
type VersionSet []string

// Has reports whether the API group/version (or group/version/Kind) is known.
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// KubeVersion mirrors chartutil.KubeVersion.
type KubeVersion struct {
	Version string
	Major   string
	Minor   string
}

func (k KubeVersion) String() string { return k.Version }

// GitVersion is the deprecated alias Helm keeps.
func (k KubeVersion) GitVersion() string { return k.Version }

// Capabilities mirrors chartutil.Capabilities.
type Capabilities struct {
	APIVersions VersionSet
	KubeVersion KubeVersion
	HelmVersion map[string]string
}

// defaultAPIVersions is a subset of the built-in API versions helm template assumes without a
// cluster (Helm derives its list from client-go's scheme; CRD groups are never in it).
var defaultAPIVersions = []string{
	"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v1", "autoscaling/v2",
	"networking.k8s.io/v1", "rbac.authorization.k8s.io/v1", "storage.k8s.io/v1",
	"apiextensions.k8s.io/v1", "admissionregistration.k8s.io/v1", "coordination.k8s.io/v1",
	"discovery.k8s.io/v1", "events.k8s.io/v1", "scheduling.k8s.io/v1", "node.k8s.io/v1",
	"certificates.k8s.io/v1", "apiregistration.k8s.io/v1",
}

// Files mirrors helm's engine.files: every chart file outside templates/ and the special files.
type Files map[string][]byte

// GetBytes returns a file's bytes, or nil.
func (f Files) GetBytes(name string) []byte { return f[name] }

// Get returns a file's content, or "".
func (f Files) Get(name string) string { return string(f[name]) }

// Glob returns the files whose path matches the pattern (path.Match syntax; see README).
func (f Files) Glob(pattern string) Files {
	out := Files{}
	for name, data := range f {
		if ok, _ := path.Match(pattern, name); ok {
			out[name] = data
		}
	}
	return out
}

// AsConfig renders the files as a ConfigMap data block: base name → content.
func (f Files) AsConfig() string {
	if len(f) == 0 {
		return ""
	}
	m := make(map[string]string, len(f))
	for k, v := range f {
		m[path.Base(k)] = string(v)
	}
	return toYAML(m)
}

// AsSecrets renders the files as a Secret data block: base name → base64 content.
func (f Files) AsSecrets() string {
	if len(f) == 0 {
		return ""
	}
	m := make(map[string]string, len(f))
	for k, v := range f {
		m[path.Base(k)] = base64.StdEncoding.EncodeToString(v)
	}
	return toYAML(m)
}

// Lines splits a file into lines.
func (f Files) Lines(name string) []string {
	if f[name] == nil {
		return []string{}
	}
	return strings.Split(string(f[name]), "\n")
}

// ---------------------------------------------------------------------------------------------
// Helm's template functions (helm.sh/helm/v3/pkg/engine/funcs.go).

func toYAML(v interface{}) string {
	data, err := marshalYAML(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(str string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yamlToJSONValue([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromYAMLArray(str string) []interface{} {
	a := []interface{}{}
	if err := yamlToJSONValue([]byte(str), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(str string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromJSONArray(str string) []interface{} {
	a := []interface{}{}
	if err := json.Unmarshal([]byte(str), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

const recursionMaxNums = 1000

// funcMap is sprig's text function map minus env/expandenv (Helm removes them), plus Helm's own.
// include and tpl need the template set they run in, so they are bound in bindIncludeTpl.
func funcMap() template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	extra := template.FuncMap{
		"toToml":        func(interface{}) string { return "" }, // see README: not provided
		"toYaml":        toYAML,
		"fromYaml":      fromYAML,
		"fromYamlArray": fromYAMLArray,
		"toJson":        toJSON,
		"fromJson":      fromJSON,
		"fromJsonArray": fromJSONArray,
		"required": func(warn string, val interface{}) (interface{}, error) {
			if val == nil {
				return val, errors.New(warn)
			} else if s, ok := val.(string); ok && s == "" {
				return val, errors.New(warn)
			}
			return val, nil
		},
		"fail": func(msg string) (string, error) { return "", errors.New(msg) },
		// helm template has no cluster: lookup always answers an empty object.
		"lookup": func(string, string, string, string) (map[string]interface{}, error) {
			return map[string]interface{}{}, nil
		},
		"include": func(string, interface{}) (string, error) { return "", errors.New("not bound") },
		"tpl":     func(string, interface{}) (string, error) { return "", errors.New("not bound") },
	}
	for k, v := range extra {
		f[k] = v
	}
	return f
}

// bindIncludeTpl installs include and tpl bound to the template set t, as Helm's engine does.
func bindIncludeTpl(t *template.Template) {
	included := map[string]int{}
	var fm template.FuncMap
	fm = template.FuncMap{
		"include": func(name string, data interface{}) (string, error) {
			var buf strings.Builder
			if included[name] > recursionMaxNums {
				return "", fmt.Errorf("rendering template has a nested reference name: %s: unable to execute template", name)
			}
			included[name]++
			err := t.ExecuteTemplate(&buf, name, data)
			included[name]--
			return buf.String(), err
		},
		"tpl": func(text string, vals interface{}) (string, error) {
			clone, err := t.Clone()
			if err != nil {
				return "", err
			}
			bindIncludeTpl(clone)
			name := "tpl"
			if m, ok := vals.(map[string]interface{}); ok {
				if tm, ok := m["Template"].(map[string]interface{}); ok {
					if n, ok := tm["Name"].(string); ok {
						name = n
					}
				}
			}
			nt, err := clone.New(name).Parse(text)
			if err != nil {
				return "", fmt.Errorf("cannot parse template %q: %w", text, err)
			}
			var buf strings.Builder
			if err := nt.Execute(&buf, vals); err != nil {
				return "", fmt.Errorf("error during tpl function execution for %q: %w", text, err)
			}
			return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
		},
	}
	t.Funcs(fm)
}

// ---------------------------------------------------------------------------------------------
// Chart loading (helm.sh/helm/v3/pkg/chart/loader + internal/sympath): walk the directory,
// following symbolic links, honouring .helmignore, and sort files into their roles.

type chartDir struct {
	meta      Metadata
	values    map[string]interface{}
	schema    []byte
	templates map[string][]byte // "templates/x.yaml" → content
	files     Files
}

type ignoreRule struct {
	pattern string
	dirOnly bool
	negate  bool
}

func loadHelmignore(root string) []ignoreRule {
	rules := []ignoreRule{{pattern: "templates/.?*"}} // Helm's default rule
	data, err := os.ReadFile(filepath.Join(root, ".helmignore"))
	if err != nil {
		return rules
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r := ignoreRule{}
		if strings.HasPrefix(line, "!") {
			r.negate = true
			line = line[1:]
		}
		if strings.HasSuffix(line, "/") {
			r.dirOnly = true
			line = strings.TrimSuffix(line, "/")
		}
		r.pattern = strings.TrimPrefix(line, "/")
		rules = append(rules, r)
	}
	return rules
}

func ignored(rules []ignoreRule, rel string, isDir bool) bool {
	out := false
	for _, r := range rules {
		if r.dirOnly && !isDir {
			continue
		}
		var match bool
		if strings.Contains(r.pattern, "/") {
			match, _ = path.Match(r.pattern, rel)
		} else {
			match, _ = path.Match(r.pattern, path.Base(rel))
		}
		if match {
			out = !r.negate
		}
	}
	return out
}

// walk visits every regular file under dir, following symlinks like Helm's sympath.Walk: a link is
// resolved (a dangling link is an error) and reported on stderr.
func walk(root, dir string, rules []ignoreRule, visit func(rel string, data []byte) error) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		full := filepath.Join(dir, e.Name())
		rel, _ := filepath.Rel(root, full)
		rel = filepath.ToSlash(rel)
		info, err := os.Lstat(full)
		if err != nil {
			return err
		}
		if info.Mode()&fs.ModeSymlink != 0 {
			resolved, err := filepath.EvalSymlinks(full)
			if err != nil {
				return fmt.Errorf("error evaluating symlink %s: %w", full, err)
			}
			fmt.Fprintf(os.Stderr, "walk.go:74: found symbolic link in path: %s resolves to %s. Contents of linked file included and used\n", full, resolved)
			if info, err = os.Stat(resolved); err != nil {
				return err
			}
		}
		if ignored(rules, rel, info.IsDir()) {
			continue
		}
		if info.IsDir() {
			if err := walk(root, full, rules, visit); err != nil {
				return err
			}
			continue
		}
		data, err := os.ReadFile(full)
		if err != nil {
			return err
		}
		if err := visit(rel, data); err != nil {
			return err
		}
	}
	return nil
}

func loadChart(root string) (*chartDir, error) {
	c := &chartDir{templates: map[string][]byte{}, files: Files{}, values: map[string]interface{}{}}
	var sawChartYAML bool
	err := walk(root, root, loadHelmignore(root), func(rel string, data []byte) error {
		switch {
		case rel == "Chart.yaml":
			sawChartYAML = true
			return yamlToJSONValue(data, &c.meta)
		case rel == "values.yaml":
			if err := yamlToJSONValue(data, &c.values); err != nil {
				return fmt.Errorf("cannot load values.yaml: %w", err)
			}
		case rel == "values.schema.json":
			c.schema = data
		case strings.HasPrefix(rel, "templates/"):
			c.templates[rel] = data
		case strings.HasPrefix(rel, "charts/"), rel == "Chart.lock", rel == "requirements.yaml", rel == "requirements.lock":
			return fmt.Errorf("%s: subcharts and dependencies are not supported by this renderer", rel)
		default:
			c.files[rel] = data
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !sawChartYAML {
		return nil, errors.New("Chart.yaml file is missing")
	}
	if c.meta.APIVersion != "v2" {
		return nil, fmt.Errorf("apiVersion %q is not v2", c.meta.APIVersion)
	}
	if c.meta.Name == "" || c.meta.Version == "" {
		return nil, errors.New("validation: chart.metadata.name and version are required")
	}
	if _, err := semver.StrictNewVersion(c.meta.Version); err != nil {
		return nil, fmt.Errorf("validation: chart.metadata.version %q is invalid", c.meta.Version)
	}
	if c.values == nil {
		c.values = map[string]interface{}{}
	}
	return c, nil
}

// ---------------------------------------------------------------------------------------------
// Values (chartutil.CoalesceValues for a chart without dependencies): user values win, maps merge
// recursively, and a user null deletes the chart default.

func coalesce(dst, src map[string]interface{}) map[string]interface{} {
	for k, sv := range src {
		if sv == nil {
			delete(dst, k)
			continue
		}
		dv, exists := dst[k]
		sm, sIsMap := sv.(map[string]interface{})
		dm, dIsMap := dv.(map[string]interface{})
		if exists && sIsMap && dIsMap {
			dst[k] = coalesce(dm, sm)
		} else {
			if exists && dIsMap && !sIsMap {
				fmt.Fprintf(os.Stderr, "coalesce.go:286: warning: cannot overwrite table with non table for %s (%v)\n", k, dv)
			}
			dst[k] = sv
		}
	}
	return dst
}

func deepCopy(v interface{}) interface{} {
	j, _ := json.Marshal(v)
	var out interface{}
	_ = json.Unmarshal(j, &out)
	return out
}

// validateSchema is chartutil.ValidateAgainstSchema, with Helm's error wording.
func validateSchema(chartName string, schema []byte, values map[string]interface{}) error {
	if len(schema) == 0 {
		return nil
	}
	valuesJSON, err := json.Marshal(values)
	if err != nil {
		return err
	}
	result, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(schema), gojsonschema.NewBytesLoader(valuesJSON))
	if err != nil {
		return fmt.Errorf("values.schema.json: %w", err)
	}
	if result.Valid() {
		return nil
	}
	var sb strings.Builder
	for _, desc := range result.Errors() {
		fmt.Fprintf(&sb, "- %s\n", desc)
	}
	return fmt.Errorf("values don't meet the specifications of the schema(s) in the following chart(s):\n%s:\n%s", chartName, sb.String())
}

// ---------------------------------------------------------------------------------------------
// Rendering (pkg/engine.Render) and output (pkg/action + pkg/releaseutil).

// installOrder is releaseutil.InstallOrder.
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
	"PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
	"PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
	"ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding",
	"RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet",
	"Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass",
	"Ingress", "APIService",
}

type manifest struct {
	source  string
	content string
	kind    string
	hook    bool
	weight  int
	index   int
}

var (
	sepRE      = regexp.MustCompile(`(?:^|\s*\n)---\s*`)
	execErrLoc = regexp.MustCompile(`^template: ([^:]+:\d+:\d+): `)
	execErrMsg = regexp.MustCompile(`(?s)^.*error calling \w+: (.*)$`)
)

// cleanErr rewrites a text/template error the way Helm's engine.cleanupExecError does.
func cleanErr(filename string, err error) error {
	// The location is where the failing action sits in the rendered file; the message is the
	// innermost function error (fail/required inside include chains).
	msg := err.Error()
	loc, inner := execErrLoc.FindStringSubmatch(msg), execErrMsg.FindStringSubmatch(msg)
	if loc != nil && inner != nil {
		return fmt.Errorf("execution error at (%s): %s", loc[1], inner[1])
	}
	return fmt.Errorf("render error in %q: %s", filename, msg)
}

func render(c *chartDir, values map[string]interface{}, rel Release, caps Capabilities) (map[string]string, error) {
	t := template.New("gotpl").Funcs(funcMap())
	// Helm's default (non-strict) mode: missing keys render as zero values, then "<no value>"
	// is stripped from the output.
	t.Option("missingkey=zero")
	bindIncludeTpl(t)

	names := make([]string, 0, len(c.templates))
	for name := range c.templates {
		names = append(names, name)
	}
	// Helm parses deeper paths first, then lexically; this decides which duplicate define wins.
	sort.Slice(names, func(i, j int) bool {
		di, dj := strings.Count(names[i], "/"), strings.Count(names[j], "/")
		if di != dj {
			return di > dj
		}
		return names[i] < names[j]
	})
	full := func(n string) string { return c.meta.Name + "/" + n }
	for _, n := range names {
		if _, err := t.New(full(n)).Parse(string(c.templates[n])); err != nil {
			return nil, fmt.Errorf("parse error at (%s): %s", full(n), strings.TrimPrefix(err.Error(), "template: "))
		}
	}

	out := map[string]string{}
	for _, n := range names {
		if strings.HasPrefix(path.Base(n), "_") {
			continue // partials are only defined, never rendered
		}
		vals := map[string]interface{}{
			"Values":       values,
			"Release":      rel,
			"Chart":        c.meta,
			"Capabilities": caps,
			"Files":        c.files,
			"Subcharts":    map[string]interface{}{},
			"Template":     map[string]interface{}{"Name": full(n), "BasePath": c.meta.Name + "/templates"},
		}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, full(n), vals); err != nil {
			return nil, cleanErr(full(n), err)
		}
		out[full(n)] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}
	return out, nil
}

// sortManifests splits rendered files into documents and orders them like Helm: plain manifests
// by install order (unknown kinds last, by kind name), then hooks by weight.
func sortManifests(rendered map[string]string) ([]manifest, []manifest, error) {
	kindRank := map[string]int{}
	for i, k := range installOrder {
		kindRank[k] = i
	}
	var plain, hooks []manifest
	files := make([]string, 0, len(rendered))
	for f := range rendered {
		files = append(files, f)
	}
	sort.Strings(files)
	idx := 0
	for _, f := range files {
		if strings.TrimSpace(rendered[f]) == "" {
			continue
		}
		for _, doc := range sepRE.Split(rendered[f], -1) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var head struct {
				Kind     string `yaml:"kind"`
				Metadata struct {
					Annotations map[string]string `yaml:"annotations"`
				} `yaml:"metadata"`
			}
			if err := yaml2.Unmarshal([]byte(doc), &head); err != nil {
				return nil, nil, fmt.Errorf("YAML parse error on %s: %w", f, err)
			}
			m := manifest{source: f, content: strings.TrimSpace(doc) /* as releaseutil.SplitManifests */, kind: head.Kind, index: idx}
			idx++
			if hk, ok := head.Metadata.Annotations["helm.sh/hook"]; ok && hk != "" {
				m.hook = true
				fmt.Sscan(head.Metadata.Annotations["helm.sh/hook-weight"], &m.weight)
				hooks = append(hooks, m)
			} else {
				plain = append(plain, m)
			}
		}
	}
	rank := func(k string) int {
		if r, ok := kindRank[k]; ok {
			return r
		}
		return len(installOrder)
	}
	sort.SliceStable(plain, func(i, j int) bool {
		ri, rj := rank(plain[i].kind), rank(plain[j].kind)
		if ri != rj {
			return ri < rj
		}
		if ri == len(installOrder) && plain[i].kind != plain[j].kind {
			return plain[i].kind < plain[j].kind
		}
		return plain[i].index < plain[j].index
	})
	sort.SliceStable(hooks, func(i, j int) bool { return hooks[i].weight < hooks[j].weight })
	return plain, hooks, nil
}

// ---------------------------------------------------------------------------------------------

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	var valueFiles, apiVersions multiFlag
	chart := flag.String("chart", "", "chart directory")
	name := flag.String("name", "dedup-worker", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	upgrade := flag.Bool("upgrade", false, "render as an upgrade (.Release.IsUpgrade)")
	kubeVersion := flag.String("kube-version", "v1.29.0", "Kubernetes version for .Capabilities")
	showValues := flag.Bool("show-values", false, "print the merged, schema-validated values as JSON and exit")
	notesOut := flag.String("notes-out", "", "write the rendered NOTES.txt here")
	flag.Var(&valueFiles, "f", "values file (repeatable; later files win)")
	flag.Var(&apiVersions, "api-versions", "extra API version for .Capabilities (repeatable)")
	flag.Parse()
	if *chart == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*chart, valueFiles, apiVersions, *name, *namespace, *upgrade, *kubeVersion, *showValues, *notesOut); err != nil {
		fmt.Fprintf(os.Stderr, "Error: %s\n", err)
		os.Exit(1)
	}
}

func run(chartPath string, valueFiles, apiVersions []string, name, namespace string, upgrade bool,
	kubeVersion string, showValues bool, notesOut string) error {
	c, err := loadChart(chartPath)
	if err != nil {
		return err
	}

	kv, err := semver.NewVersion(kubeVersion)
	if err != nil {
		return fmt.Errorf("invalid kube version %q: %w", kubeVersion, err)
	}
	caps := Capabilities{
		APIVersions: append(VersionSet(append([]string{}, defaultAPIVersions...)), apiVersions...),
		KubeVersion: KubeVersion{Version: "v" + kv.String(), Major: fmt.Sprint(kv.Major()), Minor: fmt.Sprint(kv.Minor())},
		HelmVersion: map[string]string{"version": "v3-compatible (tests/helm/render)"},
	}
	if c.meta.KubeVersion != "" {
		constraint, err := semver.NewConstraint(c.meta.KubeVersion)
		if err != nil {
			return fmt.Errorf("invalid kubeVersion constraint %q: %w", c.meta.KubeVersion, err)
		}
		if !constraint.Check(kv) {
			return fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", c.meta.KubeVersion, caps.KubeVersion.Version)
		}
	}

	user := map[string]interface{}{}
	for _, f := range valueFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		current := map[string]interface{}{}
		if err := yamlToJSONValue(data, &current); err != nil {
			return fmt.Errorf("failed to parse %s: %w", f, err)
		}
		// Later -f files are merged over earlier ones the same way (helm's mergeMaps keeps nulls,
		// which then delete chart defaults during coalescing).
		user = mergeKeepNull(user, current)
	}
	values := coalesce(deepCopy(c.values).(map[string]interface{}), user)
	if err := validateSchema(c.meta.Name, c.schema, values); err != nil {
		return err
	}
	if showValues {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(values)
	}

	rel := Release{Name: name, Namespace: namespace, Revision: 1, IsInstall: !upgrade, IsUpgrade: upgrade, Service: "Helm"}
	if upgrade {
		rel.Revision = 2
	}
	rendered, err := render(c, values, rel, caps)
	if err != nil {
		return err
	}
	notesKey := c.meta.Name + "/templates/NOTES.txt"
	if notes, ok := rendered[notesKey]; ok {
		if notesOut != "" {
			if err := os.WriteFile(notesOut, []byte(notes), 0o644); err != nil {
				return err
			}
		}
		delete(rendered, notesKey)
	}
	plain, hooks, err := sortManifests(rendered)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	for _, m := range append(plain, hooks...) {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.source, m.content)
	}
	_, err = os.Stdout.Write(b.Bytes())
	return err
}

// mergeKeepNull merges b over a recursively, keeping explicit nulls (helm's values.mergeMaps).
func mergeKeepNull(a, b map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if bm, ok := v.(map[string]interface{}); ok {
			if am, ok := out[k].(map[string]interface{}); ok {
				out[k] = mergeKeepNull(am, bm)
				continue
			}
		}
		out[k] = v
	}
	return out
}
