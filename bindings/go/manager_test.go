package pytorchsaver

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// newManagedMLP is a freshly (randomly) initialized MLP with SGD.
func newManagedMLP(t *testing.T) *Container {
	t.Helper()
	c, err := NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	err = c.Initialize(Spec{
		Model:       "pytorch_saver.models.MLP",
		ModelKwargs: map[string]any{"in_dim": 4, "hidden_dim": 8, "n_classes": 3},
		Optimizer:   "torch.optim.SGD", OptimizerKwargs: map[string]any{"lr": 0.1},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// parameterBytes is every parameter of c, name and float32 bits.
func parameterBytes(t *testing.T, c *Container) []byte {
	t.Helper()
	names, err := c.ParameterNames()
	if err != nil || len(names) == 0 {
		t.Fatalf("parameter names: %v %v", names, err)
	}
	var buf bytes.Buffer
	for _, name := range names {
		values, _, err := c.StateFloat32(name)
		if err != nil {
			t.Fatal(err)
		}
		buf.WriteString(name)
		for _, v := range values {
			_ = binary.Write(&buf, binary.LittleEndian, math.Float32bits(v))
		}
	}
	return buf.Bytes()
}

func openManager(t *testing.T, dir string, policy Policy) *Manager {
	t.Helper()
	m, err := OpenManager(dir, policy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func mustSave(t *testing.T, m *Manager, c *Container, step int64, loss float64) string {
	t.Helper()
	path, err := m.Save(c, step, map[string]any{"loss": loss})
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func checkpointFiles(t *testing.T, dir, prefix string) int {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, prefix+"_checkpoint_*.zip"))
	if err != nil {
		t.Fatal(err)
	}
	return len(files)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func TestManagerKeepLastListLatestAndPins(t *testing.T) {
	dir := t.TempDir()
	m := openManager(t, dir, Policy{Prefix: "run", KeepLast: 2})
	c := newManagedMLP(t)
	var paths []string
	for step := int64(1); step <= 4; step++ {
		paths = append(paths, mustSave(t, m, c, step, 1/float64(step)))
	}
	if n := checkpointFiles(t, dir, "run"); n != 2 {
		t.Fatalf("%d files remain, want 2", n)
	}
	latest, err := m.Latest()
	if err != nil || latest == nil || latest.Step != 4 || latest.Path != paths[3] || !exists(paths[3]) {
		t.Fatalf("latest %+v %v, want step 4 at %s", latest, err, paths[3])
	}
	list, err := m.List()
	if err != nil || len(list) != 2 {
		t.Fatalf("list %+v %v", list, err)
	}
	older, newer := list[0], list[1]
	if older.Step != 3 || older.Path != paths[2] || older.Metrics["loss"] != 1.0/3 || !slices.Equal(older.KeptBy, []string{"last"}) {
		t.Fatalf("older %+v", older)
	}
	if newer.Step != 4 || newer.Metrics["loss"] != 0.25 || !slices.Equal(newer.KeptBy, []string{"latest", "last"}) || newer.Timestamp <= 0 {
		t.Fatalf("newer %+v", newer)
	}

	// A pinned checkpoint outlives keep_last until it is unpinned.
	if err := m.Pin(paths[2]); err != nil {
		t.Fatal(err)
	}
	fifth := mustSave(t, m, c, 5, 0.2)
	if n := checkpointFiles(t, dir, "run"); n != 3 || !exists(paths[2]) {
		t.Fatalf("%d files after a pin, want 3", n)
	}
	if list, _ := m.List(); len(list) != 3 || !slices.Equal(list[0].KeptBy, []string{"pinned"}) {
		t.Fatalf("list after a pin %+v", list)
	}
	if err := m.Unpin(paths[2]); err != nil {
		t.Fatal(err)
	}
	sixth := mustSave(t, m, c, 6, 0.1)
	if n := checkpointFiles(t, dir, "run"); n != 2 || exists(paths[2]) || !exists(fifth) || !exists(sixth) {
		t.Fatalf("%d files after unpinning, want 2 (5 and 6)", n)
	}
	mustCode(t, m.Pin(filepath.Join(dir, "run_checkpoint_1.zip")), ErrUsage, "not a checkpoint of the series")
	_, err = m.Save(c, -1, nil)
	mustCode(t, err, ErrInvalidArgument, "step -1")
	_, err = m.Save(c, 7, map[string]any{"timestamp": 1})
	mustCode(t, err, ErrInvalidMetadata, "reserved")
	if best, err := m.Best(); best != nil || err != nil {
		t.Fatalf("Best without a metric: %+v %v", best, err)
	}
}

func TestManagerKeepBest(t *testing.T) {
	dir := t.TempDir()
	m := openManager(t, dir, Policy{Prefix: "run", KeepLast: 1, KeepBest: 1, Metric: "loss", Mode: ModeMin})
	c := newManagedMLP(t)
	var paths []string
	for i, loss := range []float64{0.5, 0.1, 0.7, 0.9} {
		paths = append(paths, mustSave(t, m, c, int64(i+1)*10, loss))
	}
	if n := checkpointFiles(t, dir, "run"); n != 2 {
		t.Fatalf("%d files remain, want 2", n)
	}
	list, err := m.List()
	if err != nil || len(list) != 2 {
		t.Fatalf("list %+v %v", list, err)
	}
	if list[0].Step != 20 || list[0].Path != paths[1] || !slices.Equal(list[0].KeptBy, []string{"best"}) {
		t.Fatalf("the best is not kept: %+v", list[0])
	}
	if list[1].Step != 40 || list[1].Path != paths[3] || !slices.Equal(list[1].KeptBy, []string{"latest", "last"}) {
		t.Fatalf("the newest is not kept: %+v", list[1])
	}
	best, err := m.Best()
	if err != nil || best == nil || best.Step != 20 || best.Metrics["loss"] != 0.1 {
		t.Fatalf("best %+v %v", best, err)
	}
	_, err = m.Save(c, 50, map[string]any{"accuracy": 0.5})
	mustCode(t, err, ErrInvalidMetadata, "loss")
	if n := checkpointFiles(t, dir, "run"); n != 2 {
		t.Fatalf("a refused save wrote a file: %d files", n)
	}
}

func TestManagerSaveAsyncThenWait(t *testing.T) {
	dir := t.TempDir()
	m := openManager(t, dir, Policy{Prefix: "bg", KeepLast: 2})
	a, b := newManagedMLP(t), newManagedMLP(t)
	if bytes.Equal(parameterBytes(t, a), parameterBytes(t, b)) {
		t.Fatal("two fresh MLPs have the same weights")
	}
	if path, err := m.Wait(); path != "" || err != nil {
		t.Fatalf("wait with nothing in flight: %q %v", path, err)
	}
	for i, c := range []*Container{a, b, a} {
		if err := m.SaveAsync(c, int64(i+1), map[string]any{"loss": 1 / float64(i+1)}); err != nil {
			t.Fatal(err)
		}
	}
	path, err := m.Wait()
	if err != nil || !exists(path) || !strings.Contains(filepath.Base(path), "bg_checkpoint_") {
		t.Fatalf("wait: %q %v", path, err)
	}
	if again, err := m.Wait(); again != "" || err != nil {
		t.Fatalf("a second wait: %q %v", again, err)
	}
	if n := checkpointFiles(t, dir, "bg"); n != 2 {
		t.Fatalf("%d files remain, want 2", n)
	}
	latest, err := m.Latest()
	if err != nil || latest == nil || latest.Step != 3 || latest.Path != path {
		t.Fatalf("latest %+v %v, want step 3 at %s", latest, err, path)
	}
	loaded, meta, skipped, err := m.LoadLatest(LoadOptions{})
	if err != nil || loaded == nil {
		t.Fatalf("load latest: %v", err)
	}
	defer loaded.Close()
	if !bytes.Equal(parameterBytes(t, loaded), parameterBytes(t, a)) || len(skipped) != 0 || meta["loss"] != 1.0/3 {
		t.Fatalf("the background save holds other weights, or metadata %v, skipped %v", meta, skipped)
	}

	// A refused background save fails at once; nothing is in flight.
	strict := openManager(t, dir, Policy{Prefix: "strict", KeepBest: 1, Metric: "loss"})
	mustCode(t, strict.SaveAsync(a, 1, map[string]any{"acc": 1}), ErrInvalidMetadata, "loss")

	if err := m.SaveAsync(b, 4, map[string]any{"loss": 0.125}); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil { // waits for the save
		t.Fatal(err)
	}
	if n := checkpointFiles(t, dir, "bg"); n != 2 {
		t.Fatalf("%d files after close, want 2", n)
	}
	_, err = m.List()
	mustCode(t, err, ErrUsage, "closed")
	if err := m.Close(); err != nil {
		t.Fatalf("a second close: %v", err)
	}
}

func TestManagerRestoreLatestBitForBit(t *testing.T) {
	dir := t.TempDir()
	m := openManager(t, dir, Policy{Prefix: "run"})
	saved, fresh := newManagedMLP(t), newManagedMLP(t)

	// Nothing to resume from is not an error.
	meta, skipped, err := m.RestoreLatest(fresh)
	if meta != nil || len(skipped) != 0 || err != nil {
		t.Fatalf("restore from an empty series: %v %v %v", meta, skipped, err)
	}
	none, meta, _, err := m.LoadLatest(LoadOptions{})
	if none != nil || meta != nil || err != nil {
		t.Fatalf("load from an empty series: %v %v %v", none, meta, err)
	}
	if latest, err := m.Latest(); latest != nil || err != nil {
		t.Fatalf("latest of an empty series: %+v %v", latest, err)
	}

	mustSave(t, m, saved, 100, 0.75)
	want := parameterBytes(t, saved)
	if bytes.Equal(want, parameterBytes(t, fresh)) {
		t.Fatal("two fresh MLPs have the same weights")
	}
	meta, skipped, err = m.RestoreLatest(fresh)
	if err != nil || meta["loss"] != 0.75 || len(skipped) != 0 {
		t.Fatalf("restore: %v %v %v", meta, skipped, err)
	}
	if !bytes.Equal(parameterBytes(t, fresh), want) {
		t.Fatal("the restored weights differ from the saved ones")
	}
}

func TestManagerFallsBackPastATruncatedNewest(t *testing.T) {
	dir := t.TempDir()
	m := openManager(t, dir, Policy{Prefix: "run"})
	good, damaged := newManagedMLP(t), newManagedMLP(t)
	goodPath := mustSave(t, m, good, 1, 0.5)
	badPath := mustSave(t, m, damaged, 2, 0.4)
	info, err := os.Stat(badPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(badPath, info.Size()/2); err != nil {
		t.Fatal(err)
	}
	if list, err := m.List(); err != nil || len(list) != 1 || list[0].Step != 1 || !exists(badPath) {
		t.Fatalf("list with a truncated file: %+v %v", list, err)
	}

	loaded, meta, skipped, err := m.LoadLatest(LoadOptions{})
	if err != nil || loaded == nil {
		t.Fatalf("load latest: %v", err)
	}
	defer loaded.Close()
	want := parameterBytes(t, good)
	if !bytes.Equal(parameterBytes(t, loaded), want) || meta["loss"] != 0.5 {
		t.Fatalf("load latest did not fall back to the previous file: %v", meta)
	}
	if len(skipped) != 1 || skipped[0].Path != badPath || skipped[0].Kind == "" || skipped[0].Message == "" {
		t.Fatalf("skipped %+v, want %s", skipped, badPath)
	}

	into := newManagedMLP(t)
	_, skipped, err = m.RestoreLatest(into)
	if err != nil || !bytes.Equal(parameterBytes(t, into), want) {
		t.Fatalf("restore latest did not fall back: %v", err)
	}
	if len(skipped) != 1 || skipped[0].Path != badPath {
		t.Fatalf("skipped %+v, want %s", skipped, badPath)
	}

	// Every file damaged: the newest one's error, the container untouched.
	if err := os.Truncate(goodPath, 10); err != nil {
		t.Fatal(err)
	}
	_, _, err = m.RestoreLatest(into)
	mustCode(t, err, ErrFormat, "")
	if !bytes.Equal(parameterBytes(t, into), want) {
		t.Fatal("a failed restore changed the container")
	}
}

func TestManagerLock(t *testing.T) {
	dir := t.TempDir()
	first, err := OpenManager(dir, Policy{Prefix: "run"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = OpenManager(dir, Policy{Prefix: "run"})
	mustCode(t, err, ErrLocked, "run")
	mustKind(t, err, CodeLocked, "Locked")
	other := openManager(t, dir, Policy{Prefix: "other"}) // another series
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second, err := OpenManager(dir, Policy{Prefix: "run"})
	if err != nil {
		t.Fatalf("open after the first closed: %v", err)
	}
	second.Close()
	_ = other
}

func TestManagerPolicyErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := OpenManager(dir, Policy{KeepBest: 1})
	mustCode(t, err, ErrUsage, "metric")
	_, err = OpenManager(dir, Policy{KeepLast: -1})
	mustCode(t, err, ErrUsage, "KeepLast")
	_, err = OpenManager(dir, Policy{Prefix: ".hidden"})
	mustCode(t, err, ErrUsage, "prefix")
	_, err = OpenManager(dir, Policy{Mode: "lowest"})
	mustCode(t, err, ErrInvalidArgument, "mode")
	_, err = OpenManager(dir+"\x00", Policy{})
	mustCode(t, err, ErrInvalidArgument, "NUL")

	// No keep_* keeps everything, under the prefix "checkpoint".
	m := openManager(t, dir, Policy{})
	c := newManagedMLP(t)
	for step := int64(1); step <= 3; step++ {
		mustSave(t, m, c, step, 1)
	}
	list, err := m.List()
	if err != nil || len(list) != 3 || checkpointFiles(t, dir, "checkpoint") != 3 || !slices.Equal(list[0].KeptBy, []string{"all"}) {
		t.Fatalf("keep everything: %+v %v", list, err)
	}
}

// A manager never closed is freed by its finalizer, which releases the
// series' lock.
func TestManagerFinalizerReleasesTheLock(t *testing.T) {
	dir := t.TempDir()
	func() {
		if _, err := OpenManager(dir, Policy{Prefix: "run"}); err != nil {
			t.Fatal(err)
		}
	}()
	for i := 0; i < 200; i++ {
		runtime.GC()
		m, err := OpenManager(dir, Policy{Prefix: "run"})
		if err == nil {
			m.Close()
			return
		}
		mustCode(t, err, ErrLocked, "run")
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the lock of a manager nobody holds was never released")
}
