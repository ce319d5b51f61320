// Package docs_test checks that docs/architecture.md stays true: every
// file:function it names exists, and the dependency rules it states hold.
package docs_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const (
	module = "github.com/smr-io/smr-cri"
	root   = ".." // the test runs in docs/
)

// hopRef matches `path/file.go:Name` and `path/file.go:Type.Method` in the page.
var hopRef = regexp.MustCompile("`([A-Za-z0-9_./-]+\\.go):([A-Za-z_][A-Za-z0-9_]*(?:\\.[A-Za-z_][A-Za-z0-9_]*)?)`")

// fileRef matches a bare `path/file.go`.
var fileRef = regexp.MustCompile("`([A-Za-z0-9_./-]+\\.go)`")

// declaredNames returns the top-level functions ("Name"), methods
// ("Type.Method") and types ("Type") of one Go file.
func declaredNames(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	names := map[string]bool{}
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			if d.Recv == nil || len(d.Recv.List) == 0 {
				names[d.Name.Name] = true
				continue
			}
			if recv := receiverType(d.Recv.List[0].Type); recv != "" {
				names[recv+"."+d.Name.Name] = true
			}
		case *ast.GenDecl:
			for _, s := range d.Specs {
				if ts, ok := s.(*ast.TypeSpec); ok {
					names[ts.Name.Name] = true
				}
			}
		}
	}
	return names
}

// receiverType names a method's receiver type: T, *T, T[P], *T[P].
func receiverType(e ast.Expr) string {
	for {
		switch x := e.(type) {
		case *ast.StarExpr:
			e = x.X
		case *ast.IndexExpr:
			e = x.X
		case *ast.IndexListExpr:
			e = x.X
		case *ast.Ident:
			return x.Name
		default:
			return ""
		}
	}
}

func TestArchitecturePageNamesExist(t *testing.T) {
	page, err := os.ReadFile("architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	hops := hopRef.FindAllStringSubmatch(string(page), -1)
	// The page describes two paths of about ten hops each; far fewer
	// matches means the pattern or the page broke, not that all is well.
	if len(hops) < 20 {
		t.Fatalf("architecture.md names %d file:function hops, want at least 20", len(hops))
	}
	cache := map[string]map[string]bool{}
	for _, h := range hops {
		file, name := h[1], h[2]
		names, ok := cache[file]
		if !ok {
			if _, err := os.Stat(filepath.Join(root, file)); err != nil {
				t.Errorf("architecture.md names %s:%s, but %s does not exist", file, name, file)
				cache[file] = nil
				continue
			}
			names = declaredNames(t, filepath.Join(root, file))
			cache[file] = names
		}
		if names != nil && !names[name] {
			t.Errorf("architecture.md names %s:%s, but %s declares no %s", file, name, file, name)
		}
	}
	for _, m := range fileRef.FindAllStringSubmatch(string(page), -1) {
		if _, err := os.Stat(filepath.Join(root, m[1])); err != nil {
			t.Errorf("architecture.md names %s, which does not exist", m[1])
		}
	}
}

func TestDeclaredNames(t *testing.T) {
	src := `package p
type T struct{}
type G[X any] struct{}
func F() {}
func (T) M() {}
func (*T) N() {}
func (g *G[X]) O() {}
`
	path := filepath.Join(t.TempDir(), "p.go")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	got := declaredNames(t, path)
	for _, want := range []string{"T", "G", "F", "T.M", "T.N", "G.O"} {
		if !got[want] {
			t.Errorf("declaredNames misses %s (got %v)", want, got)
		}
	}
	if got["M"] || got["O"] {
		t.Errorf("declaredNames lists a method without its type: %v", got)
	}
}

// goFile is one parsed non-generated Go file of the module.
type goFile struct {
	path    string // relative to the repository root, slash-separated
	pkgDir  string // its directory
	test    bool
	imports []string // module-relative paths of the module's packages it imports
	ast     *ast.File
}

// moduleFiles parses every Go file of the main module (nested modules such
// as hack/tools are skipped).
func moduleFiles(t *testing.T) []goFile {
	t.Helper()
	var files []goFile
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := filepath.ToSlash(strings.TrimPrefix(path, root+string(filepath.Separator)))
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata") {
				return filepath.SkipDir
			}
			if path != root {
				if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
					return filepath.SkipDir // a nested module
				}
			}
			return nil
		}
		if !strings.HasSuffix(rel, ".go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		gf := goFile{path: rel, pkgDir: filepath.ToSlash(filepath.Dir(rel)), test: strings.HasSuffix(rel, "_test.go"), ast: f}
		for _, imp := range f.Imports {
			p, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				return err
			}
			if p == module || strings.HasPrefix(p, module+"/") {
				gf.imports = append(gf.imports, strings.TrimPrefix(strings.TrimPrefix(p, module), "/"))
			}
		}
		files = append(files, gf)
		return nil
	})
	if err != nil {
		t.Fatalf("walk the module: %v", err)
	}
	return files
}

// under reports whether a module-relative path is dir or inside it.
func under(path string, dirs ...string) bool {
	return slices.ContainsFunc(dirs, func(d string) bool { return path == d || strings.HasPrefix(path, d+"/") })
}

var (
	product = []string{"cmd", "cri", "internal", "netintercept", "raftcore", "replication"}
	lab     = []string{"test", "hack", "e2e", "examples", "docs"}
)

// importRules are the dependency rules of docs/architecture.md: a non-test
// file in from may not import a package under any of never.
var importRules = []struct {
	why   string
	from  []string
	never []string
}{
	{"the product never imports the lab", product, lab},
	{"cri is a CRI proxy with a hook: of replication it knows only the pod contract's vocabulary, and never raft",
		[]string{"cri"}, []string{"raftcore", "netintercept", "internal", "replication/framing", "replication/appstate"}},
	{"raftcore knows nothing of pods", []string{"raftcore"}, []string{"cri", "replication", "netintercept", "internal/daemon", "internal/cli", "internal/install", "internal/kubecore"}},
	{"netintercept knows nothing of pods or raft", []string{"netintercept"}, []string{"cri", "replication", "raftcore", "internal"}},
	{"the pod contract's vocabulary depends on nothing", []string{"replication/podcontract"}, []string{""}},
	{"replication does not reach back into the daemon or the proxy", []string{"replication"}, []string{"cri", "internal/daemon", "internal/cli"}},
}

func TestImportRules(t *testing.T) {
	files := moduleFiles(t)
	if len(files) < 100 {
		t.Fatalf("found %d Go files under %s, want the whole module", len(files), root)
	}
	for _, f := range files {
		if f.test {
			continue // tests may use the lab
		}
		for _, r := range importRules {
			if !under(f.pkgDir, r.from...) {
				continue
			}
			for _, imp := range f.imports {
				// the podcontract rule forbids every module import ("" matches all)
				if slices.Contains(r.never, "") || under(imp, r.never...) {
					t.Errorf("%s imports %s/%s: %s", f.path, module, imp, r.why)
				}
			}
		}
	}
}

// entryDecoding are replication's names for decoding and interpreting its
// log entries; only replication may use them.
var entryDecoding = []string{"DecodeOp", "Op", "Kind", "KindOpen", "KindClose", "KindReset", "KindRequest"}

func TestDaemonDoesNotDecodeEntries(t *testing.T) {
	for _, f := range moduleFiles(t) {
		if f.test || f.pkgDir != "internal/daemon" {
			continue
		}
		name := importName(f.ast, module+"/replication")
		if name == "" {
			continue
		}
		ast.Inspect(f.ast, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); ok && x.Name == name && slices.Contains(entryDecoding, sel.Sel.Name) {
				t.Errorf("%s uses %s.%s: decoding replication's log entries is replication's job", f.path, name, sel.Sel.Name)
			}
			return true
		})
	}
}

// importName returns the name a file uses for an imported package, or "".
func importName(f *ast.File, path string) string {
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); p != path {
			continue
		}
		if imp.Name != nil {
			return imp.Name.Name
		}
		return filepath.Base(path)
	}
	return ""
}

// labOnly are product packages known to serve only tests, each with the
// reason it has not moved to test/lab yet. Keep it empty: a package here is
// a debt, not a rule.
var labOnly = map[string]string{
	"internal/monitoring": "the metric names manifests/monitoring expects; tests only; in the divergence work's files, to move to test/lab after that merge",
}

// TestProductShipsNoTestSupport keeps test helpers (fakes, in-memory
// networks, test processes) out of the product tree: every product package
// must be built into a product command (reached from a main package under
// the product through non-test imports), and no product file outside a test
// imports "testing". A helper that only tests use belongs in test/lab.
func TestProductShipsNoTestSupport(t *testing.T) {
	files := moduleFiles(t)
	imports := map[string][]string{} // package dir -> module packages its non-test files import
	var mains []string
	for _, f := range files {
		if f.test || !under(f.pkgDir, product...) {
			continue
		}
		if _, ok := imports[f.pkgDir]; !ok {
			imports[f.pkgDir] = nil
		}
		imports[f.pkgDir] = append(imports[f.pkgDir], f.imports...)
		if f.ast.Name.Name == "main" && !slices.Contains(mains, f.pkgDir) {
			mains = append(mains, f.pkgDir)
		}
		if importName(f.ast, "testing") != "" {
			t.Errorf("%s imports testing outside a _test.go file: test support belongs in test/lab", f.path)
		}
	}
	if len(mains) == 0 {
		t.Fatal("found no main package in the product")
	}
	reached := map[string]bool{}
	todo := slices.Clone(mains)
	for len(todo) > 0 {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if reached[p] {
			continue
		}
		reached[p] = true
		todo = append(todo, imports[p]...)
	}
	for p := range imports {
		_, known := labOnly[p]
		switch {
		case !reached[p] && !known:
			t.Errorf("%s is in the product tree but no product command uses it (only tests do?): move it to test/lab", p)
		case reached[p] && known:
			t.Errorf("%s is listed in labOnly but a product command uses it: remove it from labOnly", p)
		}
	}
}
