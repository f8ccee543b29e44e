package pytorchsaver

/*
#include <pytorch_saver.h>
*/
import "C"

import (
	"encoding/json"
	"math"
	"runtime"
	"sync"
)

// Mode says which way a Policy's metric improves.
type Mode string

const (
	// ModeMin: lower is better (a loss). The zero Mode is ModeMin.
	ModeMin Mode = "min"
	// ModeMax: higher is better (an accuracy).
	ModeMax Mode = "max"
)

// Policy is a checkpoint manager's prefix and retention policy
// (docs/FORMAT.md section 12.4). Zero fields are unset; setting none of
// KeepLast, KeepBest, KeepEverySteps keeps every checkpoint. The newest
// checkpoint and pinned ones are always kept.
type Policy struct {
	// Prefix is the series' file name stem ({prefix}_checkpoint_{ts}.zip);
	// "" is "checkpoint".
	Prefix string
	// KeepLast keeps the N newest (0: unset).
	KeepLast int
	// KeepBest keeps the K best by Metric (0: unset); it needs Metric.
	KeepBest int
	// Metric is the user-metadata key every save must then carry as a
	// finite number ("": none).
	Metric string
	// Mode is which way Metric improves ("": ModeMin).
	Mode Mode
	// KeepEverySteps keeps every checkpoint whose step is a multiple of
	// it (0: unset).
	KeepEverySteps int64
}

// policyJSON is the policy as pts_manager_open takes it: the set fields
// only.
func (p Policy) policyJSON() (string, error) {
	if p.KeepLast < 0 || p.KeepBest < 0 || p.KeepEverySteps < 0 {
		return "", errorf(CodeUsage, "Policy: KeepLast (%d), KeepBest (%d) and KeepEverySteps (%d) must not be negative (0 leaves them unset)",
			p.KeepLast, p.KeepBest, p.KeepEverySteps)
	}
	m := map[string]any{}
	if p.Prefix != "" {
		m["prefix"] = p.Prefix
	}
	if p.KeepLast > 0 {
		m["keep_last"] = p.KeepLast
	}
	if p.KeepBest > 0 {
		m["keep_best"] = p.KeepBest
	}
	if p.Metric != "" {
		m["metric"] = p.Metric
	}
	if p.Mode != "" {
		m["mode"] = string(p.Mode)
	}
	if p.KeepEverySteps > 0 {
		m["keep_every_steps"] = p.KeepEverySteps
	}
	text, err := json.Marshal(m)
	if err != nil {
		return "", errorf(CodeInvalidArgument, "Policy: %v", err)
	}
	return string(text), nil
}

// CheckpointInfo is a checkpoint of a manager's series, as List reports
// it.
type CheckpointInfo struct {
	// Path is the file's path.
	Path string `json:"path"`
	// Step is the step it was saved at.
	Step int64 `json:"step"`
	// Timestamp is the file's timestamp, in Unix seconds.
	Timestamp int64 `json:"timestamp"`
	// Metrics are the finite numbers of the save's user metadata.
	Metrics map[string]float64 `json:"metrics"`
	// KeptBy names the retention rules that keep it now: "latest",
	// "pinned", "last", "best", "every", "all".
	KeptBy []string `json:"kept_by"`
}

// SkippedFile is a checkpoint that LoadLatest or RestoreLatest skipped:
// its path and the error it gave (Kind as Error.Kind, such as
// "NoEndRecord" for a truncated file).
type SkippedFile struct {
	Path    string `json:"path"`
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

// Manager keeps a series of checkpoints in one directory under one
// prefix (docs/FORMAT.md section 12), the same series that managers in
// Python, Rust, C and C++ keep: each save names its step and metrics in
// the file, retention deletes what the policy no longer keeps, and
// LoadLatest and RestoreLatest resume from the newest checkpoint that
// loads.
//
//	m, err := pytorchsaver.OpenManager("ckpt", pytorchsaver.Policy{Prefix: "run", KeepLast: 3})
//	defer m.Close()
//	meta, skipped, err := m.RestoreLatest(c) // meta is nil when there is nothing yet
//	err = m.SaveAsync(c, step, map[string]any{"loss": 0.42})
//
// A Manager holds the series' lock until Close: a second manager of the
// same directory and prefix, in this process or another, gets an error
// matching ErrLocked. Its methods hold its lock for their call, so it may
// be shared by goroutines. A finalizer frees it (and releases the lock)
// if Close is never called; methods called after Close return an error
// matching ErrUsage.
type Manager struct {
	mu      sync.Mutex
	ptr     *C.pts_manager_t
	cleanup runtime.Cleanup
	policy  Policy
}

func freeManager(ptr *C.pts_manager_t) { C.pts_manager_free(ptr) }

// OpenManager opens the series of policy.Prefix in dir (created with its
// parents if missing). Another live manager of the series is an error
// matching ErrLocked; a policy the library refuses (KeepBest without
// Metric, a prefix starting with '.') one matching ErrUsage.
func OpenManager(dir string, policy Policy) (*Manager, error) {
	cdir, err := cString("dir", dir)
	if err != nil {
		return nil, err
	}
	defer freeString(cdir)
	text, err := policy.policyJSON()
	if err != nil {
		return nil, err
	}
	cpolicy, err := cString("policy", text)
	if err != nil {
		return nil, err
	}
	defer freeString(cpolicy)
	var out *C.pts_manager_t
	if err := takeError(C.pts_manager_open(cdir, cpolicy, &out)); err != nil {
		return nil, err
	}
	m := &Manager{ptr: out, policy: policy}
	m.cleanup = runtime.AddCleanup(m, freeManager, out)
	return m, nil
}

// Close waits for the background save, releases the lock and frees the
// manager. It returns the error of a background save that Wait did not
// collect; the manager is closed either way. Calling it again does
// nothing and returns nil.
func (m *Manager) Close() error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ptr == nil {
		return nil
	}
	m.cleanup.Stop()
	err := takeError(C.pts_manager_close(m.ptr))
	m.ptr = nil
	return err
}

// with runs f on the live handle under the manager's lock.
func (m *Manager) with(f func(ptr *C.pts_manager_t) error) error {
	if m == nil {
		return errorf(CodeNullArgument, "the manager is nil")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ptr == nil {
		return errClosed("manager")
	}
	maybeGC()
	err := f(m.ptr)
	runtime.KeepAlive(m)
	return err
}

// withContainer runs f on both live handles, the manager's lock taken
// first.
func (m *Manager) withContainer(c *Container, f func(mp *C.pts_manager_t, cp *C.pts_container_t) error) error {
	return m.with(func(mp *C.pts_manager_t) error {
		return c.with(func(cp *C.pts_container_t) error { return f(mp, cp) })
	})
}

// saveArgs checks a save's step and encodes its metadata for C.
func saveArgs(step int64, metadata map[string]any) (*C.char, error) {
	if step < 0 {
		return nil, errorf(CodeInvalidArgument, "step %d: a checkpoint's step is an integer >= 0", step)
	}
	return marshalObject("metadata", metadata, CodeInvalidMetadata)
}

// Save writes c's checkpoint of step with metadata (nil for none), whose
// finite numbers become the checkpoint's metrics, then deletes what the
// policy no longer keeps, and returns the new file's path. The policy's
// Metric, when set, must be among them (an error matching
// ErrInvalidMetadata otherwise, and nothing is written). It returns first
// the error of a background save that Wait did not collect.
func (m *Manager) Save(c *Container, step int64, metadata map[string]any) (string, error) {
	cmeta, err := saveArgs(step, metadata)
	if err != nil {
		return "", err
	}
	defer freeString(cmeta)
	var path string
	var relay *progressRelay
	err = m.withContainer(c, func(mp *C.pts_manager_t, cp *C.pts_container_t) error {
		relay = c.saveProgress
		relay.reset()
		var out *C.char
		if err := takeError(C.pts_manager_save(mp, cp, C.uint64_t(step), cmeta, &out)); err != nil {
			return err
		}
		path = takeString(out)
		return nil
	})
	relay.repanic()
	return path, err
}

// SaveAsync is Save in the background: it waits for the save in flight,
// copies c's tensors and metadata into the manager's snapshot buffer and
// returns; c may change at once. Wait collects the outcome.
func (m *Manager) SaveAsync(c *Container, step int64, metadata map[string]any) error {
	cmeta, err := saveArgs(step, metadata)
	if err != nil {
		return err
	}
	defer freeString(cmeta)
	return m.withContainer(c, func(mp *C.pts_manager_t, cp *C.pts_container_t) error {
		return takeError(C.pts_manager_save_async(mp, cp, C.uint64_t(step), cmeta))
	})
}

// Wait waits for the background save in flight and returns its path, or
// its error; "" when nothing was in flight.
func (m *Manager) Wait() (string, error) {
	var path string
	err := m.with(func(ptr *C.pts_manager_t) error {
		var out *C.char
		if err := takeError(C.pts_manager_wait(ptr, &out)); err != nil {
			return err
		}
		path = takeString(out)
		return nil
	})
	return path, err
}

// jsonResult runs a call that gives JSON text and decodes it into v.
func (m *Manager) jsonResult(v any, call func(ptr *C.pts_manager_t, out **C.char) *C.pts_error_t) error {
	var text string
	err := m.with(func(ptr *C.pts_manager_t) error {
		var out *C.char
		if err := takeError(call(ptr, &out)); err != nil {
			return err
		}
		text = takeString(out)
		return nil
	})
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(text), v); err != nil {
		return errorf(CodeInvalidJSON, "the library's JSON %q: %v", text, err)
	}
	return nil
}

// List returns the series' checkpoints, oldest first. Files that cannot
// be read (truncated, corrupt) are not listed.
func (m *Manager) List() ([]CheckpointInfo, error) {
	var list []CheckpointInfo
	err := m.jsonResult(&list, func(ptr *C.pts_manager_t, out **C.char) *C.pts_error_t {
		return C.pts_manager_list(ptr, out)
	})
	return list, err
}

// Latest returns the newest checkpoint of the series (by step, then
// timestamp, then file name), or nil when there is none.
func (m *Manager) Latest() (*CheckpointInfo, error) {
	var latest *CheckpointInfo
	err := m.jsonResult(&latest, func(ptr *C.pts_manager_t, out **C.char) *C.pts_error_t {
		return C.pts_manager_latest(ptr, out)
	})
	return latest, err
}

// Best returns the checkpoint with the best value of the policy's Metric
// (ties go to the newer), or nil without a Metric or a checkpoint that
// has it.
func (m *Manager) Best() (*CheckpointInfo, error) {
	list, err := m.List()
	if err != nil || m.policy.Metric == "" {
		return nil, err
	}
	var best *CheckpointInfo
	for i := range list { // oldest first: a later one replaces an equal value
		v, ok := list[i].Metrics[m.policy.Metric]
		if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		if best == nil {
			best = &list[i]
			continue
		}
		b := best.Metrics[m.policy.Metric]
		if (m.policy.Mode == ModeMax && v >= b) || (m.policy.Mode != ModeMax && v <= b) {
			best = &list[i]
		}
	}
	return best, nil
}

// Pin makes retention keep a checkpoint of the series (by path or file
// name) until Unpin. A file that is not a checkpoint of the series is an
// error matching ErrUsage.
func (m *Manager) Pin(path string) error { return m.pin(path, true) }

// Unpin lets retention delete a pinned checkpoint again, at the next
// save. A name that is not pinned is left as it is.
func (m *Manager) Unpin(path string) error { return m.pin(path, false) }

func (m *Manager) pin(path string, pin bool) error {
	cpath, err := cString("path", path)
	if err != nil {
		return err
	}
	defer freeString(cpath)
	return m.with(func(ptr *C.pts_manager_t) error {
		return takeError(C.pts_manager_pin(ptr, cpath, C.bool(pin)))
	})
}

// resumeResult decodes what a load or restore of the latest gave.
func resumeResult(meta, skipped *C.char) (map[string]any, []SkippedFile, error) {
	hasMeta := meta != nil
	metaText, skippedText := takeString(meta), takeString(skipped)
	var files []SkippedFile
	if skippedText != "" {
		if err := json.Unmarshal([]byte(skippedText), &files); err != nil {
			return nil, nil, errorf(CodeInvalidJSON, "the library's skipped list %q: %v", skippedText, err)
		}
	}
	if !hasMeta {
		return nil, files, nil
	}
	m, err := flatMetadata(metaText)
	return m, files, err
}

// LoadLatest loads the newest checkpoint that loads (every CRC-32
// checked; LoadOptions.SkipVerify does not apply) into a new container
// over the built-in classes, trying older ones when it fails. It returns
// the container (nil, with nil metadata, when the series has no
// checkpoint), the flat metadata as LoadContainer, and the files skipped
// with their errors. When every checkpoint fails, the newest one's error
// is returned.
func (m *Manager) LoadLatest(opts LoadOptions) (*Container, map[string]any, []SkippedFile, error) {
	copts, relay, err := opts.cOptions()
	if err != nil {
		return nil, nil, nil, err
	}
	defer freeOptions(copts, relay)
	var out *C.pts_container_t
	var meta, skipped *C.char
	err = m.with(func(ptr *C.pts_manager_t) error {
		return takeError(C.pts_manager_load_latest(ptr, nil, copts, &out, &meta, &skipped))
	})
	if err != nil {
		return nil, nil, nil, err
	}
	var c *Container
	if out != nil {
		c = wrapContainer(out)
	}
	metadata, files, err := resumeResult(meta, skipped)
	if err == nil && c != nil {
		err = c.recordGoAsProducer()
	}
	if err != nil {
		c.Close()
		return nil, nil, nil, err
	}
	return c, metadata, files, nil
}

// RestoreLatest restores the newest checkpoint that restores into the
// objects c holds (as Container.Restore, tracked objects included), trying
// older ones when it fails; a failed one leaves c as it was. It returns
// the flat metadata (nil when the series has no checkpoint) and the files
// skipped with their errors.
func (m *Manager) RestoreLatest(c *Container) (map[string]any, []SkippedFile, error) {
	return m.RestoreLatestWith(c, LoadOptions{})
}

// RestoreLatestWith is RestoreLatest with options (Copy does not apply;
// every CRC-32 is checked whatever SkipVerify says).
func (m *Manager) RestoreLatestWith(c *Container, opts LoadOptions) (map[string]any, []SkippedFile, error) {
	copts, relay, err := opts.cOptions()
	if err != nil {
		return nil, nil, err
	}
	defer freeOptions(copts, relay)
	var meta, skipped *C.char
	err = m.withContainer(c, func(mp *C.pts_manager_t, cp *C.pts_container_t) error {
		return takeError(C.pts_manager_restore_latest(mp, cp, copts, &meta, &skipped))
	})
	if err != nil {
		return nil, nil, err
	}
	return resumeResult(meta, skipped)
}
