package pytorchsaver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The shared corpora of bad files, which every language runs: the
// malformed files of tests/corpus, which opening must refuse with the
// error kind the manifest names, and the hostile but well-formed files of
// tests/hostile, which loading must refuse naming the culprit without
// allocating what they ask for.

// corpusRoot is tests/corpus of the repository, from bindings/go.
const corpusRoot = "../../tests/corpus"

// corpusCase is one case of tests/corpus/manifest.json.
type corpusCase struct {
	// File is the case's file, next to the manifest.
	File string `json:"file"`
	// Kind is the error kind opening it must report.
	Kind string `json:"kind"`
	// Message is a substring the error's message must contain.
	Message string `json:"message"`
	// What says what is wrong with the file.
	What string `json:"what"`
}

// readCorpusManifest reads dir/manifest.json, refusing a case that lacks
// a field or names a file twice.
func readCorpusManifest(t *testing.T, dir string) []corpusCase {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var manifest struct {
		Cases []corpusCase `json:"cases"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&manifest); err != nil {
		t.Fatalf("%s/manifest.json: %v", dir, err)
	}
	if len(manifest.Cases) == 0 {
		t.Fatalf("%s/manifest.json lists no case", dir)
	}
	seen := map[string]bool{}
	for i, c := range manifest.Cases {
		if c.File == "" || c.Kind == "" || c.Message == "" || c.What == "" {
			t.Errorf("case %d (%q): file, kind, message and what are all required", i, c.File)
		}
		if seen[c.File] {
			t.Errorf("%s is listed twice", c.File)
		}
		seen[c.File] = true
	}
	return manifest.Cases
}

// corpusFiles lists the regular files of dir other than the manifest and
// what describes or makes the corpus (README, generator scripts).
func corpusFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() { // a corpus of its own, such as sharded/
			continue
		}
		if name == "manifest.json" || strings.HasPrefix(name, "README") || strings.HasSuffix(name, ".py") {
			continue
		}
		files = append(files, name)
	}
	return files
}

// checkCorpus opens every case of the corpus in dir and reports every
// case whose refusal is not the manifest's.
func checkCorpus(t *testing.T, dir string) {
	cases := readCorpusManifest(t, dir)
	var listed []string
	for _, c := range cases {
		listed = append(listed, c.File)
	}
	slices.Sort(listed)
	if files := corpusFiles(t, dir); !slices.Equal(files, listed) {
		t.Errorf("the directory holds %v\nthe manifest lists %v", files, listed)
	}
	for _, c := range cases {
		t.Run(c.File, func(t *testing.T) {
			ckpt, err := OpenCheckpoint(filepath.Join(dir, c.File))
			if err == nil {
				ckpt.Close()
				t.Fatalf("opened; want %s containing %q (%s)", c.Kind, c.Message, c.What)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("%T %v is not an *Error", err, err)
			}
			if e.Kind != c.Kind {
				t.Errorf("kind %q (%v), want %q (%s)", e.Kind, err, c.Kind, c.What)
			}
			if !strings.Contains(e.Message, c.Message) {
				t.Errorf("message %q does not contain %q", e.Message, c.Message)
			}
			// A refused file has one of a reader's codes.
			if e.Code != CodeFormat && e.Code != CodeUnsupportedVersion && e.Code != CodeIO {
				t.Errorf("code %d (%v) is not a reader's refusal", e.Code, e.Code)
			}
		})
	}
}

// Every malformed file of the shared corpus is refused by OpenCheckpoint
// with the kind and message its manifest records.
func TestCorpusFilesAreRefusedWithTheirKind(t *testing.T) {
	checkCorpus(t, corpusRoot)
}

// ---- tests/hostile ------------------------------------------------------

// hostileRoot is tests/hostile of the repository, from bindings/go.
const hostileRoot = "../../tests/hostile"

// The environment of a child process that loads one hostile file.
const (
	hostileRoleEnv = "PTS_GO_HOSTILE_ROLE" // "file", or "factory" for tests.go.Huge
	hostilePathEnv = "PTS_GO_HOSTILE_PATH"
	// hostileMark starts each line of the child's results.
	hostileMark = "HOSTILE_RESULT "
)

// hostileMaxGrowthKiB is how far above its baseline a refused load may
// take the child's peak resident memory: the bound the Rust, C and Python
// runners of the corpus assert.
const hostileMaxGrowthKiB = 256 << 10

// hostileControlBytes is what the control child allocates and touches:
// more than the bound, which it must be seen to exceed.
const hostileControlBytes = (hostileMaxGrowthKiB + 64<<10) << 10

// hostileHangGuard only stops a hung child; no time is asserted.
const hostileHangGuard = 2 * time.Minute

// hugeClass is a Go model with no layout: one parameter huge.weight of
// as many floats as its kwarg n says, made with EmptyTensor when loading.
const hugeClass = "tests.go.Huge"

// hugeN is 2**30 floats: the 4 GiB the hostile file's kwargs ask for.
const hugeN = 1 << 30

// hugeFactory builds tests.go.Huge. Not loading, it makes 2 floats
// whatever n says, so that a saved file's kwargs can lie about its size.
func hugeFactory(kw *Kwargs, loading bool, b *ModelBuilder) error {
	n, err := kw.Int("n")
	if err != nil {
		return err
	}
	var w *Tensor
	if loading {
		w, err = EmptyTensor(Float32, []int64{n})
	} else {
		w, err = NewTensorOf([]float32{1, 2}, []int64{2})
	}
	if err != nil {
		return err
	}
	if err := b.AddParameter("huge.weight", w); err != nil {
		return err
	}
	return b.SetForward(func([]float32, []int64, bool) ([]float32, []int64, error) {
		return nil, nil, fmt.Errorf("%s has no forward (its weight has %d floats)", hugeClass, n)
	})
}

// hostileResult is what a child reports about one load.
type hostileResult struct {
	API         string `json:"api"`
	Loaded      bool   `json:"loaded"`
	Code        Code   `json:"code"`
	Kind        string `json:"kind"`
	Message     string `json:"message"`
	NotError    string `json:"not_error,omitempty"`
	Reset       bool   `json:"reset"`
	BaselineKiB int64  `json:"baseline_kib"`
	PeakKiB     int64  `json:"peak_kib"`
}

// statusKiB is a field of /proc/self/status in KiB, or -1.
func statusKiB(field string) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

// reportLoad runs one load with the peak RSS reset first and prints what
// happened for the parent.
func reportLoad(api string, load func() error) {
	// 5 resets VmHWM to the current RSS (proc(5)).
	reset := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
	r := hostileResult{API: api, Reset: reset, BaselineKiB: statusKiB("VmRSS")}
	err := load()
	r.PeakKiB = statusKiB("VmHWM")
	r.Loaded = err == nil
	var e *Error
	if errors.As(err, &e) {
		r.Code, r.Kind, r.Message = e.Code, e.Kind, e.Message
	} else if err != nil {
		r.NotError = fmt.Sprintf("%T: %v", err, err)
	}
	line, _ := json.Marshal(r)
	fmt.Printf("\n%s%s\n", hostileMark, line)
}

// What a child process runs: both loads of one file. Without the
// environment of a child it does nothing.
func TestHostileChildProcess(t *testing.T) {
	role, path := os.Getenv(hostileRoleEnv), os.Getenv(hostilePathEnv)
	if role == "control" {
		reportLoad("control", func() error {
			// What a loader that allocated what a file asks would do.
			b := make([]byte, hostileControlBytes)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			runtime.KeepAlive(b)
			return errorf(CodeStateMismatch, "control: touched %d bytes", len(b))
		})
		return
	}
	if role == "" || path == "" {
		return
	}
	registry, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	defer registry.Close()
	if role == "factory" {
		if err := registry.RegisterModel(hugeClass, hugeFactory); err != nil {
			t.Fatal(err)
		}
	}
	// libtorch's own start-up is not the load's doing.
	warm, err := NewTensorOf([]float32{1, 2, 3, 4}, []int64{4})
	if err != nil {
		t.Fatal(err)
	}
	warm.Close()
	reportLoad("LoadContainer", func() error {
		c, _, err := registry.LoadContainer(path)
		c.Close()
		return err
	})
	reportLoad("LoadModel", func() error {
		m, _, err := registry.LoadModel(path, LoadOptions{})
		m.Close()
		return err
	})
}

// hostileCase is one hostile file and what its refusal must say.
type hostileCase struct {
	label, path, role string
	needles           []string
	// code is the error code, where the test knows it; 0: any refusal.
	code Code
}

// hostileRefusals are the codes that mean the loader refused the file; any
// other (a libtorch error from an attempted allocation, a factory that
// panicked) means it went further than it should have.
var hostileRefusals = []Code{CodeFormat, CodeUnsupportedVersion, CodeUnknownName, CodeInvalidKwargs, CodeStateMismatch}

// checkHostile runs c in a child process and reports what is wrong with
// its outcome.
func checkHostile(t *testing.T, c hostileCase) {
	t.Helper()
	results := runHostileChild(t, c.role, c.path)
	if len(results) != 2 {
		t.Fatalf("%d results, want 2: %+v", len(results), results)
	}
	checkHostileResults(t, c, results)
}

// runHostileChild runs this test binary's TestHostileChildProcess in the
// given role and returns the results it printed.
func runHostileChild(t *testing.T, role, path string) []hostileResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hostileHangGuard)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHostileChildProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), hostileRoleEnv+"="+role, hostilePathEnv+"="+path)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("hung: killed after %v", hostileHangGuard)
	}
	if err != nil {
		t.Fatalf("the child failed: %v\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
	}
	for _, text := range []string{"panic:", "goroutine "} {
		if strings.Contains(stderr.String(), text) || strings.Contains(stdout.String(), text) {
			t.Errorf("the child printed a panic (%q):\n%s", text, &stderr)
		}
	}
	var results []hostileResult
	scanner := bufio.NewScanner(&stdout)
	for scanner.Scan() {
		if line, ok := strings.CutPrefix(scanner.Text(), hostileMark); ok {
			var r hostileResult
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("the child printed %q: %v", line, err)
			}
			results = append(results, r)
		}
	}
	return results
}

// The measure the hostile tests rely on sees an allocation: a child that
// touches more memory than the bound is reported above it.
func TestHostileMemoryMeasureSeesAnAllocation(t *testing.T) {
	results := runHostileChild(t, "control", "")
	if len(results) != 1 {
		t.Fatalf("%d results, want 1: %+v", len(results), results)
	}
	r := results[0]
	if !r.Reset || r.BaselineKiB < 0 {
		t.Fatalf("could not reset or read the peak RSS: %+v", r)
	}
	if growth := r.PeakKiB - r.BaselineKiB; growth < hostileControlBytes>>10 {
		t.Fatalf("touching %d KiB raised the peak RSS by %d KiB only", hostileControlBytes>>10, growth)
	}
}

// checkHostileResults reports what is wrong with a child's results.
func checkHostileResults(t *testing.T, c hostileCase, results []hostileResult) {
	t.Helper()
	for _, r := range results {
		t.Logf("%s: [%d %s] %s (peak %d KiB, baseline %d KiB)", r.API, r.Code, r.Kind, r.Message, r.PeakKiB, r.BaselineKiB)
		if r.Loaded {
			t.Errorf("%s loaded the file", r.API)
			continue
		}
		if r.NotError != "" {
			t.Errorf("%s: the error is not an *Error: %s", r.API, r.NotError)
		}
		if !slices.Contains(hostileRefusals, r.Code) || (c.code != 0 && r.Code != c.code) || r.Kind == "" {
			t.Errorf("%s: not the expected refusal but [%d %s] %s", r.API, r.Code, r.Kind, r.Message)
		}
		if !slices.ContainsFunc(c.needles, func(s string) bool { return strings.Contains(r.Message, s) }) {
			t.Errorf("%s: %q contains none of %q", r.API, r.Message, c.needles)
		}
		if !r.Reset || r.BaselineKiB < 0 || r.PeakKiB < 0 {
			t.Errorf("%s: could not reset or read the peak RSS (/proc/self/clear_refs, /proc/self/status)", r.API)
		} else if r.PeakKiB > r.BaselineKiB+hostileMaxGrowthKiB {
			t.Errorf("%s: peak RSS %d KiB is more than %d KiB above the baseline %d KiB",
				r.API, r.PeakKiB, hostileMaxGrowthKiB, r.BaselineKiB)
		}
	}
}

// Every hostile file of the shared corpus is refused by LoadContainer and
// LoadModel with an error naming the problem, in a child process whose
// peak memory stays within 256 MiB of where it started.
func TestHostileFilesAreRefusedInBoundedMemory(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(hostileRoot, "cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var listed []struct {
		File               string   `json:"file"`
		MessageContainsAny []string `json:"message_contains_any"`
	}
	if err := json.Unmarshal(data, &listed); err != nil {
		t.Fatalf("cases.json: %v", err)
	}
	if len(listed) == 0 {
		t.Fatal("cases.json lists no case")
	}
	for _, l := range listed {
		t.Run(l.File, func(t *testing.T) {
			path := filepath.Join(hostileRoot, l.File)
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("listed but missing: %v", err)
			}
			if len(l.MessageContainsAny) == 0 {
				t.Fatal("message_contains_any is empty")
			}
			checkHostile(t, hostileCase{label: l.File, path: path, role: "file", needles: l.MessageContainsAny})
		})
	}
}

// A Go factory asked by a file's kwargs for 4 GiB of floats, in a file
// that holds 2 of them, is refused after it made its tensor with
// EmptyTensor, naming the tensor, with that memory never touched.
func TestHostileGoFactoryWithoutLayout(t *testing.T) {
	registry, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	defer registry.Close()
	if err := registry.RegisterModel(hugeClass, hugeFactory); err != nil {
		t.Fatal(err)
	}
	c, err := registry.NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Initialize(Spec{Model: hugeClass, ModelKwargs: map[string]any{"n": hugeN}}); err != nil {
		t.Fatal(err)
	}
	path, err := c.SaveInference(t.TempDir(), "huge", nil)
	if err != nil {
		t.Fatal(err)
	}
	// The file itself is fine: only its kwargs lie.
	ckpt, err := OpenCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := ckpt.ModelKwargs()["n"]; n != float64(hugeN) {
		t.Fatalf("the file's kwargs say n = %v", n)
	}
	ckpt.Close()
	checkHostile(t, hostileCase{label: "huge", path: path, role: "factory", needles: []string{"huge.weight"}, code: CodeStateMismatch})
}
