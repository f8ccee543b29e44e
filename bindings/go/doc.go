// Package pytorchsaver is the Go binding of pytorch-saver: checkpoints of
// PyTorch training state (the model's state dict, the optimizer's and LR
// scheduler's state, their class names and constructor kwargs, a
// timestamp and free JSON metadata) in one format that Python, Rust, C,
// C++ and Go read and write. A model trained in Python loads here by
// name, with no code but its class name, to be served or inspected.
//
// It wraps the library's C API (include/pytorch_saver.h) with cgo and
// builds against the installed SDK through pkg-config (package
// pytorch_saver): run `make install` in the repository, then build with
// PKG_CONFIG_PATH=<repo>/target/sdk/lib/pkgconfig.
//
// # Reading a checkpoint
//
// OpenCheckpoint validates a whole file (every CRC-32, header and the
// metadata schema) and reads its metadata and tensors without building a
// model:
//
//	ckpt, err := pytorchsaver.OpenCheckpoint("model_checkpoint_1795886184.zip")
//	if err != nil { ... }
//	defer ckpt.Close()
//	fmt.Println(ckpt.ModelClass(), ckpt.ModelKwargs(), ckpt.UserMetadata())
//	names, _ := ckpt.TensorNames(pytorchsaver.MemberModel)
//	w, shape, _ := ckpt.ReadFloat32(pytorchsaver.MemberModel, "fc1.weight")
//
// # Containers
//
// A Container is Python's ModelContainer: a model built by class name
// (through a Registry, which holds the built-in classes and Go models),
// with an optional optimizer and LR scheduler. Initialize builds them,
// Save and SaveInference write files, LoadContainer rebuilds all three
// from a file, Forward runs the model in eval mode on float32 slices.
//
// # Inference
//
// LoadModel loads a file's model alone, for inference (eval mode, no
// gradients): a Model, whose Forward any number of goroutines may call at
// once, running in parallel. LoadOptions choose between mapping the file
// (the default) and copying its tensors (Copy, for a file that may be
// rewritten while in use), and let a file verified at deployment skip
// the CRC check (SkipVerify).
//
// # Metadata
//
// Metadata is the typed metadata.json of docs/FORMAT.md: the kwargs, the
// timestamp, the user's keys and the format internals (classes, producer,
// optimizer and scheduler state). Checkpoint.TypedMetadata returns a
// file's; MetadataFromMap types the flat metadata map that LoadContainer,
// LoadModel and Container.Restore return; ParseMetadata reads JSON text.
// In format version 2 the kwargs and the extra training state
// (Checkpoint.Extra, whose tensors are in MemberExtra) are typed values:
// tags decoded to Tuple, TorchDtype, ClassRef and the other types of
// docs/FORMAT.md section 11.2.
//
// # Errors
//
// Every error is an *Error carrying a stable Code, a finer Kind (for a
// refused file, the check that failed: "CrcMismatch", "Truncated",
// "Schema", ..., the same string in every language; kinds are never
// renamed) and a message naming what failed. Each code has a sentinel for
// errors.Is:
//
//	if errors.Is(err, pytorchsaver.ErrStateMismatch) { ... }
//
// # Concurrency
//
// Checkpoint, Registry, Tensor and Model may be used from several
// goroutines at once; a Model runs concurrent Forward calls in parallel
// (a Go model only if its factory called ModelBuilder.SetThreadSafe). A
// Container serializes its calls with a lock (the C container is
// single-threaded even for forward), so it too may be shared, with calls
// running one at a time; use a Model for parallel inference.
//
// # Sharded checkpoints
//
// OpenSharded opens a sharded checkpoint (docs/FORMAT.md section 13: the
// shards that the ranks of a torch.distributed job wrote, and the
// index.json that names them) by its directory, object-store prefix or
// index, as one checkpoint: Index gives the parsed index, TensorNames and
// TensorInfo the global tensors, ReadFloat32 and the other readers a
// tensor assembled from its chunks, and Verify checks every shard's CRCs.
// Consolidate writes one ordinary file from it, which LoadContainer serves.
//
// # Memory
//
// Each Go value owns its C handle. Close frees it at once; calling Close
// again does nothing, and any other call after Close returns an error
// matching ErrUsage (never a crash), even when Close races with it. A
// value that becomes unreachable without Close is freed by a finalizer
// (runtime.AddCleanup), so forgetting Close leaks nothing for long, but
// Close releases memory (a model, a memory-mapped file) deterministically
// and should be preferred.
//
// # Models written in Go
//
// Registry.RegisterModel registers a ModelFactory under a class name.
// The factory reads its kwargs, adds its parameters (Tensors it made from
// Go slices, which the container then shares and updates in place) and
// sets a ForwardFunc computing on float32 slices; when loading from a
// file it makes its tensors with EmptyTensor, and it calls SetThreadSafe
// when its ForwardFunc may run on several goroutines at once. The library refers to
// the Go factory and model through runtime/cgo handles (integers, never
// Go pointers), deleted by the library's finalizer calls when the last
// registry or container using them is freed. Go has no autograd, so such
// models are for inference and for carrying state between languages.
package pytorchsaver
