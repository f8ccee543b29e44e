package pytorchsaver

/*
#include <pytorch_saver.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// This file owns sharded checkpoints in Go (docs/FORMAT.md section 13):
// Sharded, the open checkpoint, over the library's pts_sharded_* calls;
// Consolidate; and the schema of index.json, ShardedIndex, with
// ParseShardedIndex, the one function that reads it.

// Sharded is an open sharded checkpoint: a location (a directory or an
// object-store prefix) holding index.json and one shard file per rank
// that wrote tensor data, read as one logical checkpoint. Its tensors are
// the global tensors of the index, each assembled from its chunks when
// read.
//
// OpenSharded checks the index (its JSON and schema, and that every
// tensor's chunks tile it) and every shard file's structure, metadata and
// tensor headers against it, reading no tensor data (docs/FORMAT.md
// section 13.5, steps 1 to 4); Verify reads every shard whole, checking
// every CRC-32. A refusal is an *Error whose Kind is the check that failed, as every
// language's reader reports it: "NotCommitted" (no index.json: an
// interrupted or unfinished save), "Json", "Schema",
// "UnsupportedVersion", "ChunkTiling" (chunks that overlap or leave
// elements uncovered), "MissingShard" (a shard file the index names does
// not exist), "ShardMismatch" (a shard file of another size, kind,
// checkpoint or rank than the index says, or whose tensors differ from
// the chunks), "TensorNotFound", or the kind of a shard file the reader
// refuses ("CrcMismatch", ...). The new kinds have CodeFormat, so they
// match ErrFormat; compare the Kind for the finer check:
//
//	var e *pytorchsaver.Error
//	if errors.As(err, &e) && e.Kind == "NotCommitted" { ... }
//
// A Sharded is read-only: any number of goroutines may use it at once.
// Close frees it (a finalizer does if Close is never called); after Close
// the tensor methods and Verify return an error matching ErrUsage, while
// IndexJSON and Index, which read a copy made at open, keep working.
type Sharded struct {
	mu        sync.RWMutex
	ptr       *C.pts_sharded_t
	cleanup   runtime.Cleanup
	indexJSON string
	// index is indexJSON parsed.
	index *ShardedIndex
}

// OpenSharded opens the sharded checkpoint at location: a directory or
// an object-store prefix URL holding index.json, or the path or URL of
// the index.json itself. A location without index.json is an error of
// kind "NotCommitted", naming it.
func OpenSharded(location string) (*Sharded, error) {
	cloc, err := cString("location", location)
	if err != nil {
		return nil, err
	}
	defer freeString(cloc)
	var ptr *C.pts_sharded_t
	if err := takeError(C.pts_sharded_open(cloc, &ptr)); err != nil {
		return nil, err
	}
	var text *C.char
	if err := takeError(C.pts_sharded_index(ptr, &text)); err != nil {
		C.pts_sharded_free(ptr)
		return nil, err
	}
	s := &Sharded{indexJSON: C.GoString(text)}
	if s.index, err = ParseShardedIndex(s.indexJSON); err != nil {
		C.pts_sharded_free(ptr)
		var e *Error
		if errors.As(err, &e) { // made by the parse: this call's own
			e.Message = location + ": " + e.Message
		}
		return nil, err
	}
	s.ptr = ptr
	s.cleanup = runtime.AddCleanup(s, freeSharded, ptr)
	return s, nil
}

func freeSharded(ptr *C.pts_sharded_t) { C.pts_sharded_free(ptr) }

// Close frees the sharded checkpoint. Calling it again does nothing; it
// may run while other goroutines use the checkpoint (their calls then
// fail with ErrUsage). It always returns nil.
func (s *Sharded) Close() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ptr != nil {
		s.cleanup.Stop()
		C.pts_sharded_free(s.ptr)
		s.ptr = nil
	}
	return nil
}

// IndexJSON returns index.json as the library read it.
func (s *Sharded) IndexJSON() string { return s.indexJSON }

// Index returns index.json, typed. Each call returns a new copy.
func (s *Sharded) Index() *ShardedIndex {
	index, err := ParseShardedIndex(s.indexJSON)
	if err != nil {
		panic("pytorchsaver: a parsed index no longer types: " + err.Error())
	}
	return index
}

// with runs f on the live handle under the read lock.
func (s *Sharded) with(f func(ptr *C.pts_sharded_t) error) error {
	if s == nil {
		return errorf(CodeNullArgument, "the sharded checkpoint is nil")
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.ptr == nil {
		return errClosed("sharded checkpoint")
	}
	maybeGC()
	err := f(s.ptr)
	runtime.KeepAlive(s)
	return err
}

// withName is with, with name as a C string.
func (s *Sharded) withName(name string, f func(ptr *C.pts_sharded_t, cname *C.char) error) error {
	cname, err := cString("tensor name", name)
	if err != nil {
		return err
	}
	defer freeString(cname)
	return s.with(func(ptr *C.pts_sharded_t) error { return f(ptr, cname) })
}

// Verify reads every shard file whole, in the index's order, as opening
// a checkpoint file does (docs/FORMAT.md section 9: every CRC-32, every
// BOOL byte); OpenSharded already checked the rest of each shard (its
// size, kind, checkpoint and rank, and its tensors against the chunks).
// It returns the first failure, naming its shard file ("CrcMismatch",
// ...).
func (s *Sharded) Verify() error {
	return s.with(func(ptr *C.pts_sharded_t) error { return takeError(C.pts_sharded_verify(ptr)) })
}

// TensorNames returns the names of the checkpoint's tensors, sorted (for
// a container checkpoint, "model.<name>" and
// "optimizer.state.<index>.<key>").
func (s *Sharded) TensorNames() ([]string, error) {
	var names []string
	err := s.with(func(ptr *C.pts_sharded_t) error {
		var n C.size_t
		if err := takeError(C.pts_sharded_tensor_count(ptr, &n)); err != nil {
			return err
		}
		names = make([]string, 0, int(n))
		for i := C.size_t(0); i < n; i++ {
			var name *C.char
			if err := takeError(C.pts_sharded_tensor_name(ptr, i, &name)); err != nil {
				return err
			}
			names = append(names, C.GoString(name))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return names, nil
}

// TensorInfo returns a tensor's dtype, global shape and byte size without
// reading it. An unknown name is an error matching ErrNotFound.
func (s *Sharded) TensorInfo(name string) (TensorInfo, error) {
	var info TensorInfo
	err := s.withName(name, func(ptr *C.pts_sharded_t, cname *C.char) (err error) {
		info, err = cShardedInfo(ptr, cname)
		return err
	})
	return info, err
}

func cShardedInfo(ptr *C.pts_sharded_t, cname *C.char) (TensorInfo, error) {
	var dtype C.pts_dtype_t
	var shape *C.int64_t
	var ndim, nbytes C.size_t
	if err := takeError(C.pts_sharded_tensor_info(ptr, cname, &dtype, &shape, &ndim, &nbytes)); err != nil {
		return TensorInfo{}, err
	}
	dims := make([]int64, int(ndim))
	if ndim > 0 {
		copy(dims, unsafe.Slice((*int64)(unsafe.Pointer(shape)), int(ndim)))
	}
	return TensorInfo{DType: DType(dtype), Shape: dims, NumBytes: int(nbytes)}, nil
}

// ReadBytes returns a tensor assembled from its chunks, as bytes (C
// order, little-endian), whatever its dtype, and its global shape. This
// is how Float16 and BFloat16 tensors are read.
func (s *Sharded) ReadBytes(name string) ([]byte, []int64, error) {
	return shardedRead[byte](s, name, 0)
}

// ReadFloat32 returns a Float32 tensor's elements, assembled from its
// chunks (C order), and its global shape. Another dtype is an error
// matching ErrInvalidArgument.
func (s *Sharded) ReadFloat32(name string) ([]float32, []int64, error) {
	return shardedRead[float32](s, name, Float32)
}

// ReadFloat64 returns a Float64 tensor's elements and its global shape.
func (s *Sharded) ReadFloat64(name string) ([]float64, []int64, error) {
	return shardedRead[float64](s, name, Float64)
}

// ReadInt64 returns an Int64 tensor's elements and its global shape.
func (s *Sharded) ReadInt64(name string) ([]int64, []int64, error) {
	return shardedRead[int64](s, name, Int64)
}

// ReadInt32 returns an Int32 tensor's elements and its global shape.
func (s *Sharded) ReadInt32(name string) ([]int32, []int64, error) {
	return shardedRead[int32](s, name, Int32)
}

// ReadInt16 returns an Int16 tensor's elements and its global shape.
func (s *Sharded) ReadInt16(name string) ([]int16, []int64, error) {
	return shardedRead[int16](s, name, Int16)
}

// ReadInt8 returns an Int8 tensor's elements and its global shape.
func (s *Sharded) ReadInt8(name string) ([]int8, []int64, error) {
	return shardedRead[int8](s, name, Int8)
}

// ReadUint8 returns a Uint8 tensor's elements and its global shape.
func (s *Sharded) ReadUint8(name string) ([]uint8, []int64, error) {
	return shardedRead[uint8](s, name, Uint8)
}

// ReadBool returns a Bool tensor's elements and its global shape.
func (s *Sharded) ReadBool(name string) ([]bool, []int64, error) {
	raw, shape, err := shardedRead[byte](s, name, Bool)
	if err != nil {
		return nil, nil, err
	}
	return bytesToBools(raw), shape, nil
}

// shardedRead assembles a tensor into a new []T, refusing a dtype other
// than want (0: any; T is then byte). It allocates only what the shard
// files that hold the tensor's chunks can pay for.
func shardedRead[T Element](s *Sharded, name string, want DType) ([]T, []int64, error) {
	var out []T
	var shape []int64
	err := s.withName(name, func(ptr *C.pts_sharded_t, cname *C.char) error {
		info, err := cShardedInfo(ptr, cname)
		if err != nil {
			return err
		}
		if want != 0 && info.DType != want {
			return errorf(CodeInvalidArgument, "tensor %q of the sharded checkpoint is %v, not %v", name, info.DType, want)
		}
		if err := s.index.checkAffordable(name, info.NumBytes); err != nil {
			return err
		}
		var zero T
		out = make([]T, info.NumBytes/int(unsafe.Sizeof(zero)))
		err = takeError(C.pts_sharded_tensor_read(ptr, cname, sliceData(out), C.size_t(info.NumBytes)))
		if err != nil {
			return err
		}
		if want != 0 {
			fromLittleEndian(out)
		}
		shape = info.Shape
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return out, shape, nil
}

// Consolidate writes the sharded checkpoint at location as one ordinary
// checkpoint file at outPath (docs/FORMAT.md section 13.5): for a
// container checkpoint, a file of the container's kind with the model's
// tensors in MemberModel and the optimizer's in MemberOptimizer; otherwise
// a weights file with every tensor in MemberModel and each value as user
// metadata. It verifies every shard first (as Verify), writes a temporary
// file and publishes it without replacing anything: an existing outPath is
// refused (CodeIO, kind "Io"), an outPath not ending in ".zip" too
// (CodeInvalidArgument), and a failure leaves no file at outPath.
func Consolidate(location, outPath string) error {
	cloc, err := cString("location", location)
	if err != nil {
		return err
	}
	defer freeString(cloc)
	cout, err := cString("output path", outPath)
	if err != nil {
		return err
	}
	defer freeString(cout)
	return takeError(C.pts_sharded_consolidate(cloc, cout))
}

// ---- index.json ---------------------------------------------------------

// ShardedIndexFormat is the value of index.json's "format" key.
const ShardedIndexFormat = "pytorch-saver-sharded"

// ShardedIndexVersion is the index version this package reads.
const ShardedIndexVersion = 1

// ShardedIndex is a sharded checkpoint's index.json, typed
// (docs/FORMAT.md section 13.1). Sharded.Index gives an open
// checkpoint's; ParseShardedIndex reads JSON text. A ShardedIndex is a
// copy: changing it changes nothing else.
type ShardedIndex struct {
	// FormatVersion is the index version, 1.
	FormatVersion int
	// CheckpointID is the save's 32 lowercase hexadecimal digits, written
	// into every shard too.
	CheckpointID string
	// Timestamp is when the save began, in Unix seconds (UTC).
	Timestamp int64
	// Producer is the implementation that wrote the index.
	Producer Producer
	// WorldSize is the number of ranks that saved.
	WorldSize int
	// Shards are the shard files, in index order (a Chunk's Shard is a
	// position in it).
	Shards []ShardFile
	// Tensors maps each global tensor's name to its entry.
	Tensors map[string]ShardedTensor
	// Values maps each non-tensor value's name to the value, as
	// encoding/json decodes it (numbers are float64). Never nil.
	Values map[string]any
	// PlannerData maps each name of Tensors and Values to its path in the
	// nested state dict that was saved: strings and int64s.
	PlannerData map[string][]any
	// Container is present iff a model container saved the checkpoint.
	Container *ShardedContainer
}

// ShardFile is one shard file of the index.
type ShardFile struct {
	// File is the file's name, relative to the location.
	File string
	// Rank is the rank that wrote it.
	Rank int
	// Size is the file's size in bytes.
	Size int64
}

// ShardedTensor is a global tensor of the index.
type ShardedTensor struct {
	DType DType
	// Shape is the global shape (empty for a scalar).
	Shape []int64
	// RequiresGrad is as the saved tensor had it.
	RequiresGrad bool
	// Chunks tile the tensor.
	Chunks []Chunk
}

// Chunk is one piece of a global tensor: along each dimension d, the
// indices Offsets[d] .. Offsets[d]+Sizes[d], held by the tensor named
// Tensor of the model.safetensors of shard Shard (a position in
// ShardedIndex.Shards).
type Chunk struct {
	Offsets []int64
	Sizes   []int64
	Shard   int
	Tensor  string
}

// ShardedContainer is what a model container's sharded save adds to the
// index (docs/FORMAT.md section 13.3).
type ShardedContainer struct {
	// Metadata is the metadata.json the same objects saved to one file
	// would have (kind checkpoint or inference); its Internals are never
	// nil.
	Metadata *Metadata
	// Placements maps the name of each model tensor (without "model.")
	// that was a distributed tensor to its placement; nil when absent.
	Placements map[string]Placement
}

// Placement is a distributed tensor's device mesh and placements.
type Placement struct {
	// MeshShape is the device mesh's shape.
	MeshShape []int64
	// Placements has, per mesh dimension, "R" (replicated), "S(d)"
	// (sharded along dimension d) or "P" (partial).
	Placements []string
}

// Time returns Timestamp as a time (whole seconds, UTC).
func (x *ShardedIndex) Time() time.Time { return time.Unix(x.Timestamp, 0).UTC() }

// ParseShardedIndex reads index.json text: strict JSON (as metadata.json:
// no key twice in one object, numbers a float64 holds, at most 127 levels;
// kind "Json"), the keys and types of docs/FORMAT.md section 13.1 (kind
// "Schema"; container.metadata as ParseMetadata reads it) and a format
// version this package reads (kind "UnsupportedVersion"). The checks
// between entries that the library makes when it opens a checkpoint
// (chunks inside their tensor and tiling it, shard positions and ranks,
// names unique) are not repeated here.
func ParseShardedIndex(text string) (*ShardedIndex, error) {
	object, err := decodeStrictObject(text, "index.json")
	if err != nil {
		return nil, err
	}
	return newShardedIndex(object)
}

// indexKeys are the keys of index.json, REQUIRED but the last.
var indexKeys = []string{"format", "format_version", "checkpoint_id", "timestamp", "producer",
	"world_size", "shards", "tensors", "values", "planner_data", "container"}

// maxExactInteger is the largest integer every float64 below it holds
// exactly: 2**53.
const maxExactInteger = 1 << 53

// newShardedIndex types a decoded index, checking format and
// format_version first, as section 13.1 orders.
func newShardedIndex(object map[string]any) (*ShardedIndex, error) {
	if format, ok := object["format"].(string); !ok || format != ShardedIndexFormat {
		return nil, indexError("format", fmt.Sprintf("must be %q, not %v", ShardedIndexFormat, object["format"]))
	}
	version, err := indexInteger(object["format_version"], "format_version", 0, maxExactInteger)
	if err != nil {
		return nil, err
	}
	if version != ShardedIndexVersion {
		return nil, &Error{Code: CodeUnsupportedVersion, Kind: "UnsupportedVersion",
			Message: fmt.Sprintf("index.json: format_version %d; this library reads version %d", version, ShardedIndexVersion)}
	}
	for key := range object {
		if !slices.Contains(indexKeys, key) {
			return nil, indexError(key, "not a key of the index")
		}
	}
	for _, key := range indexKeys[:len(indexKeys)-1] {
		if _, ok := object[key]; !ok {
			return nil, indexError(key, "missing")
		}
	}
	x := &ShardedIndex{FormatVersion: int(version)}
	id, ok := object["checkpoint_id"].(string)
	if !ok || len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
		return nil, indexError("checkpoint_id", "must be 32 lowercase hexadecimal digits")
	}
	x.CheckpointID = id
	if x.Timestamp, err = indexInteger(object["timestamp"], "timestamp", 0, maxExactInteger); err != nil {
		return nil, err
	}
	if x.Producer, err = indexProducer(object["producer"]); err != nil {
		return nil, err
	}
	worldSize, err := indexInteger(object["world_size"], "world_size", 1, math.MaxInt32)
	if err != nil {
		return nil, err
	}
	x.WorldSize = int(worldSize)
	if x.Shards, err = indexShards(object["shards"], worldSize); err != nil {
		return nil, err
	}
	if x.Tensors, err = indexTensors(object["tensors"]); err != nil {
		return nil, err
	}
	values, ok := object["values"].(map[string]any)
	if !ok {
		return nil, indexError("values", "must be an object")
	}
	x.Values = values
	if x.PlannerData, err = indexPlannerData(object["planner_data"]); err != nil {
		return nil, err
	}
	if c, ok := object["container"]; ok {
		if x.Container, err = indexContainer(c); err != nil {
			return nil, err
		}
	}
	return x, nil
}

func indexProducer(v any) (Producer, error) {
	object, ok := v.(map[string]any)
	if !ok {
		return Producer{}, indexError("producer", "must be an object")
	}
	var p Producer
	for _, f := range []struct {
		key      string
		into     *string
		required bool
	}{{"library", &p.Library, true}, {"version", &p.Version, true}, {"language", &p.Language, true},
		{"torch_version", &p.TorchVersion, false}} {
		s, present := object[f.key]
		if !present && !f.required {
			continue
		}
		str, ok := s.(string)
		if !ok || str == "" {
			return Producer{}, indexError("producer."+f.key, "must be a non-empty string")
		}
		*f.into = str
	}
	return p, nil
}

func indexShards(v any, worldSize int64) ([]ShardFile, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, indexError("shards", "must be a list")
	}
	shards := make([]ShardFile, len(list))
	for i, item := range list {
		path := fmt.Sprintf("shards[%d]", i)
		object, err := indexObject(item, path, "file", "rank", "size")
		if err != nil {
			return nil, err
		}
		file, ok := object["file"].(string)
		if !ok || file == "" || file == "." || file == ".." || strings.Contains(file, "/") {
			return nil, indexError(path+".file", "must be a file name (no '/', not '.' or '..')")
		}
		rank, err := indexInteger(object["rank"], path+".rank", 0, worldSize-1)
		if err != nil {
			return nil, err
		}
		size, err := indexInteger(object["size"], path+".size", 0, maxExactInteger)
		if err != nil {
			return nil, err
		}
		shards[i] = ShardFile{File: file, Rank: int(rank), Size: size}
	}
	return shards, nil
}

func indexTensors(v any) (map[string]ShardedTensor, error) {
	object, ok := v.(map[string]any)
	if !ok {
		return nil, indexError("tensors", "must be an object")
	}
	tensors := make(map[string]ShardedTensor, len(object))
	for name, item := range object {
		path := "tensors." + name
		entry, err := indexObject(item, path, "dtype", "shape", "requires_grad", "chunks")
		if err != nil {
			return nil, err
		}
		var t ShardedTensor
		dtypeName, _ := entry["dtype"].(string)
		if t.DType = dtypeByName(dtypeName); t.DType == 0 {
			return nil, indexError(path+".dtype", fmt.Sprintf("%v is not a dtype of the format", entry["dtype"]))
		}
		if t.Shape, err = indexIntegers(entry["shape"], path+".shape"); err != nil {
			return nil, err
		}
		if t.RequiresGrad, ok = entry["requires_grad"].(bool); !ok {
			return nil, indexError(path+".requires_grad", "must be a bool")
		}
		chunks, ok := entry["chunks"].([]any)
		if !ok || len(chunks) == 0 {
			return nil, indexError(path+".chunks", "must be a non-empty list")
		}
		t.Chunks = make([]Chunk, len(chunks))
		for i, c := range chunks {
			if t.Chunks[i], err = indexChunk(c, fmt.Sprintf("%s.chunks[%d]", path, i)); err != nil {
				return nil, err
			}
		}
		tensors[name] = t
	}
	return tensors, nil
}

func indexChunk(v any, path string) (Chunk, error) {
	object, err := indexObject(v, path, "offsets", "sizes", "shard", "tensor")
	if err != nil {
		return Chunk{}, err
	}
	var c Chunk
	if c.Offsets, err = indexIntegers(object["offsets"], path+".offsets"); err != nil {
		return Chunk{}, err
	}
	if c.Sizes, err = indexIntegers(object["sizes"], path+".sizes"); err != nil {
		return Chunk{}, err
	}
	shard, err := indexInteger(object["shard"], path+".shard", 0, math.MaxInt32)
	if err != nil {
		return Chunk{}, err
	}
	c.Shard = int(shard)
	tensor, ok := object["tensor"].(string)
	if !ok || tensor == "" {
		return Chunk{}, indexError(path+".tensor", "must be a non-empty string")
	}
	c.Tensor = tensor
	return c, nil
}

func indexPlannerData(v any) (map[string][]any, error) {
	object, ok := v.(map[string]any)
	if !ok {
		return nil, indexError("planner_data", "must be an object")
	}
	out := make(map[string][]any, len(object))
	for name, item := range object {
		path := "planner_data." + name
		list, ok := item.([]any)
		if !ok || len(list) == 0 {
			return nil, indexError(path, "must be a non-empty list of strings and integers")
		}
		steps := make([]any, len(list))
		for i, step := range list {
			if s, ok := step.(string); ok {
				steps[i] = s
				continue
			}
			n, err := indexInteger(step, fmt.Sprintf("%s[%d]", path, i), -maxExactInteger, maxExactInteger)
			if err != nil {
				return nil, err
			}
			steps[i] = n
		}
		out[name] = steps
	}
	return out, nil
}

func indexContainer(v any) (*ShardedContainer, error) {
	object, ok := v.(map[string]any)
	if !ok {
		return nil, indexError("container", "must be an object")
	}
	for key := range object {
		if key != "metadata" && key != "placements" {
			return nil, indexError("container."+key, "not a key of the container")
		}
	}
	metaObject, ok := object["metadata"].(map[string]any)
	if !ok {
		return nil, indexError("container.metadata", "must be an object")
	}
	meta, err := newMetadata(metaObject, nil)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.Message = "index.json: container.metadata: " + e.Message
		}
		return nil, err
	}
	if meta.Internals == nil {
		return nil, indexError("container.metadata.__pytorch_saver__", "missing")
	}
	if k := meta.Internals.Kind; k != KindCheckpoint && k != KindInference {
		return nil, indexError("container.metadata.__pytorch_saver__.kind", fmt.Sprintf("must be checkpoint or inference, not %s", k))
	}
	c := &ShardedContainer{Metadata: meta}
	placements, present := object["placements"]
	if !present {
		return c, nil
	}
	byName, ok := placements.(map[string]any)
	if !ok {
		return nil, indexError("container.placements", "must be an object")
	}
	c.Placements = make(map[string]Placement, len(byName))
	for name, item := range byName {
		path := "container.placements." + name
		entry, err := indexObject(item, path, "mesh_shape", "placements")
		if err != nil {
			return nil, err
		}
		var p Placement
		if p.MeshShape, err = indexIntegers(entry["mesh_shape"], path+".mesh_shape"); err != nil {
			return nil, err
		}
		list, ok := entry["placements"].([]any)
		if !ok {
			return nil, indexError(path+".placements", "must be a list of strings")
		}
		for i, item := range list {
			s, ok := item.(string)
			if !ok {
				return nil, indexError(fmt.Sprintf("%s.placements[%d]", path, i), "must be a string")
			}
			p.Placements = append(p.Placements, s)
		}
		c.Placements[name] = p
	}
	return c, nil
}

// checkAffordable refuses to assemble the tensor name in nbytes bytes
// when the shard files holding its chunks, all together, are smaller:
// such an index asks for memory its files do not hold.
func (x *ShardedIndex) checkAffordable(name string, nbytes int) error {
	t, ok := x.Tensors[name]
	if !ok {
		return nil // the library found it: nothing to bound it by here
	}
	var held int64
	seen := map[int]bool{}
	for _, c := range t.Chunks {
		if c.Shard < len(x.Shards) && !seen[c.Shard] {
			seen[c.Shard] = true
			held += x.Shards[c.Shard].Size
		}
	}
	if int64(nbytes) > held {
		return &Error{Code: CodeFormat, Kind: "ShardMismatch", Message: fmt.Sprintf(
			"tensor %q of %d bytes is larger than the %d bytes of the shard files holding its chunks", name, nbytes, held)}
	}
	return nil
}

// dtypeByName is the dtype of a safetensors name ("F32"), or 0.
func dtypeByName(name string) DType {
	for d := Float64; d <= Bool; d++ {
		if dtypeNames[d] == name {
			return d
		}
	}
	return 0
}

// indexObject is v as an object with exactly the given keys.
func indexObject(v any, path string, keys ...string) (map[string]any, error) {
	object, ok := v.(map[string]any)
	if !ok {
		return nil, indexError(path, "must be an object")
	}
	for _, key := range keys {
		if _, ok := object[key]; !ok {
			return nil, indexError(path+"."+key, "missing")
		}
	}
	if len(object) != len(keys) {
		for key := range object {
			if !slices.Contains(keys, key) {
				return nil, indexError(path+"."+key, "not a key of this object")
			}
		}
	}
	return object, nil
}

// indexInteger is v as an integer in [lo, hi], |lo| and |hi| at most 2**53.
func indexInteger(v any, path string, lo, hi int64) (int64, error) {
	if v == nil {
		return 0, indexError(path, "missing")
	}
	f, ok := v.(float64)
	if !ok || f != math.Trunc(f) || f < float64(lo) || f > float64(hi) {
		return 0, indexError(path, fmt.Sprintf("must be an integer in %d..%d, not %v", lo, hi, v))
	}
	return int64(f), nil
}

// indexIntegers is v as a list of integers >= 0.
func indexIntegers(v any, path string) ([]int64, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, indexError(path, "must be a list of integers")
	}
	out := make([]int64, len(list))
	for i, item := range list {
		n, err := indexInteger(item, fmt.Sprintf("%s[%d]", path, i), 0, maxExactInteger)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

// indexError is an index that is not section 13.1's (kind "Schema").
func indexError(field, reason string) *Error {
	return &Error{Code: CodeFormat, Kind: "Schema", Message: "index.json: field " + field + ": " + reason}
}
