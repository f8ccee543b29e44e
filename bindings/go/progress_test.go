package pytorchsaver

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// record collects what a ProgressFunc heard; the library serializes the
// calls, from whichever thread they come.
type record struct {
	mu    sync.Mutex
	calls [][2]uint64
}

func (r *record) fn(done, total uint64) {
	r.mu.Lock()
	r.calls = append(r.calls, [2]uint64{done, total})
	r.mu.Unlock()
}

func (r *record) take() [][2]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	calls := r.calls
	r.calls = nil
	return calls
}

// expectComplete checks the contract of a successful operation and
// returns its total.
func expectComplete(t *testing.T, calls [][2]uint64) uint64 {
	t.Helper()
	if len(calls) < 2 {
		t.Fatalf("calls %v: want a start and an end", calls)
	}
	total := calls[0][1]
	if total == 0 || calls[0][0] != 0 || calls[len(calls)-1] != [2]uint64{total, total} {
		t.Fatalf("calls %v: want (0, T) first and (T, T) last", calls)
	}
	for i := 1; i < len(calls); i++ {
		if calls[i][1] != total || calls[i][0] <= calls[i-1][0] {
			t.Fatalf("calls %v: call %d is not a larger count of the same total", calls, i)
		}
	}
	return total
}

// bigMLP is a 16 MiB model: one 2048 x 2048 layer.
func bigMLP(t *testing.T) *Container {
	t.Helper()
	c, err := NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	err = c.Initialize(Spec{
		Model:       "pytorch_saver.models.MLP",
		ModelKwargs: map[string]any{"in_dim": 2048, "hidden_dim": 2048, "n_classes": 3, "n_layers": 1},
		Optimizer:   "torch.optim.SGD", OptimizerKwargs: map[string]any{"lr": 0.1},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func fileSize(t *testing.T, path string) uint64 {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(info.Size())
}

func TestProgressOfSaves(t *testing.T) {
	base := liveHandles.Load()
	dir := t.TempDir()
	c := bigMLP(t)
	var r record
	if err := c.SetSaveProgress(r.fn); err != nil {
		t.Fatal(err)
	}
	path, err := c.Save(dir, "p", nil)
	if err != nil {
		t.Fatal(err)
	}
	calls := r.take()
	if total := expectComplete(t, calls); total != fileSize(t, path) || total < 16<<20 || len(calls) < 4 {
		t.Fatalf("total %d in %d calls, the file has %d bytes", total, len(calls), fileSize(t, path))
	}
	path, err = c.SaveInference(dir, "p", nil)
	if err != nil {
		t.Fatal(err)
	}
	if total := expectComplete(t, r.take()); total != fileSize(t, path) {
		t.Fatalf("inference save: total %d, file %d", total, fileSize(t, path))
	}

	m, err := OpenManager(filepath.Join(dir, "series"), Policy{Prefix: "run"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	path, err = m.Save(c, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if total := expectComplete(t, r.take()); total != fileSize(t, path) {
		t.Fatalf("managed save: total %d, file %d", total, fileSize(t, path))
	}
	if err := m.SaveAsync(c, 2, nil); err != nil {
		t.Fatal(err)
	}
	path, err = m.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if total := expectComplete(t, r.take()); total != fileSize(t, path) {
		t.Fatalf("background save: total %d, file %d", total, fileSize(t, path))
	}

	if err := c.SetSaveProgress(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Save(dir, "p", nil); err != nil {
		t.Fatal(err)
	}
	if calls := r.take(); len(calls) != 0 {
		t.Fatalf("a cleared callback heard %v", calls)
	}
	// The library released the relay's handle once nothing could report to it.
	waitForHandles(t, base)
}

func TestProgressOfLoadsAndOpens(t *testing.T) {
	base := liveHandles.Load()
	dir := t.TempDir()
	path, err := bigMLP(t).Save(dir, "p", nil)
	if err != nil {
		t.Fatal(err)
	}
	var r record
	ckpt, err := OpenCheckpointWith(path, LoadOptions{Progress: r.fn})
	if err != nil {
		t.Fatal(err)
	}
	ckpt.Close()
	checked := expectComplete(t, r.take())
	if checked < 16<<20 || checked >= fileSize(t, path) {
		t.Fatalf("an open checked %d bytes of %d", checked, fileSize(t, path))
	}

	loaded, _, err := LoadContainerWith(path, LoadOptions{Progress: r.fn})
	if err != nil {
		t.Fatal(err)
	}
	defer loaded.Close()
	if total := expectComplete(t, r.take()); total != checked {
		t.Fatalf("a zero-copy load: total %d, want the %d checked", total, checked)
	}
	copied, _, err := LoadContainerWith(path, LoadOptions{Copy: true, Progress: r.fn})
	if err != nil {
		t.Fatal(err)
	}
	defer copied.Close()
	if total := expectComplete(t, r.take()); total <= checked+16<<20 {
		t.Fatalf("a copying load: total %d, want the %d checked and the copy", total, checked)
	}
	if _, err := loaded.RestoreWith(path, LoadOptions{Progress: r.fn}); err != nil {
		t.Fatal(err)
	}
	if total := expectComplete(t, r.take()); total <= checked+16<<20 {
		t.Fatalf("a restore: total %d, want the %d checked and the copy", total, checked)
	}
	model, _, err := LoadModel(path, LoadOptions{SkipVerify: true, Progress: r.fn})
	if err != nil {
		t.Fatal(err)
	}
	model.Close()
	if total := expectComplete(t, r.take()); total >= checked {
		t.Fatalf("an unverified zero-copy load: total %d, want metadata.json's alone", total)
	}
	waitForHandles(t, base)
}

func TestProgressOfACorruptedFileNeverEnds(t *testing.T) {
	dir := t.TempDir()
	path, err := bigMLP(t).Save(dir, "p", nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x40
	corrupted := writeFile(t, dir, "corrupted.zip", data)
	var r record
	_, err = OpenCheckpointWith(corrupted, LoadOptions{Progress: r.fn})
	if !errors.Is(err, ErrFormat) {
		t.Fatalf("open of a corrupted file: %v, want ErrFormat", err)
	}
	calls := r.take()
	if len(calls) == 0 || calls[0][0] != 0 {
		t.Fatalf("calls %v: want a start", calls)
	}
	for _, c := range calls {
		if c[0] >= c[1] {
			t.Fatalf("calls %v: a failed open reported its end", calls)
		}
	}
}

func TestProgressPanicReachesTheCaller(t *testing.T) {
	dir := t.TempDir()
	c := bigMLP(t)
	heard := 0
	err := c.SetSaveProgress(func(done, total uint64) {
		heard++
		panic("the display is gone")
	})
	if err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if p := recover(); p != "the display is gone" {
				t.Fatalf("recovered %v, want the callback's panic", p)
			}
		}()
		c.Save(dir, "p", nil)
		t.Fatal("Save returned without the callback's panic")
	}()
	if heard != 1 {
		t.Fatalf("called %d times, want once: not again after it panicked", heard)
	}
	// The library never saw the panic: the file was written.
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Fatalf("files %v (%v), want the checkpoint", entries, err)
	}
	// The next save starts afresh.
	if err := c.SetSaveProgress(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Save(dir, "q", nil); err != nil {
		t.Fatal(err)
	}
}
