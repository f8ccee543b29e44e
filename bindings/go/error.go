package pytorchsaver

import "fmt"

// Code is a stable error code: one of the PTS_ERROR_* values of the C
// API. Codes are never renumbered or reused.
type Code uint32

// The error codes, as docs/C_API.md lists them.
const (
	// CodeNullArgument: a required argument was missing (NULL in C).
	CodeNullArgument Code = 1
	// CodeInvalidArgument: an argument out of range or malformed: a
	// string with a NUL byte, a wrong dtype, a buffer of the wrong
	// length, an index past the end.
	CodeInvalidArgument Code = 2
	// CodeInvalidJSON: kwargs or metadata that are not a JSON object.
	CodeInvalidJSON Code = 3
	// CodeIO: the operating system refused a file operation (a missing
	// file, an unwritable directory).
	CodeIO Code = 4
	// CodeFormat: the file is not a valid checkpoint (truncated, corrupt,
	// not a ZIP, breaking format v1).
	CodeFormat Code = 5
	// CodeUnsupportedVersion: the file declares a format version this
	// library does not read.
	CodeUnsupportedVersion Code = 6
	// CodeUnknownName: a class name the registry does not hold.
	CodeUnknownName Code = 7
	// CodeDuplicateName: a second registration under a name already
	// taken, or a tensor added twice.
	CodeDuplicateName Code = 8
	// CodeInvalidKwargs: constructor kwargs the class does not accept.
	CodeInvalidKwargs Code = 9
	// CodeFactory: a model factory failed.
	CodeFactory Code = 10
	// CodeInvalidMetadata: user metadata that uses a reserved key or that
	// JSON cannot hold.
	CodeInvalidMetadata Code = 11
	// CodeNotInitialized: the container holds no model yet.
	CodeNotInitialized Code = 12
	// CodeStateMismatch: saved state that does not fit the object it is
	// loaded into.
	CodeStateMismatch Code = 13
	// CodeInvalidState: malformed optimizer or scheduler state.
	CodeInvalidState Code = 14
	// CodeUsage: a call the configuration does not allow (no optimizer,
	// no scheduler, a metric missing), or a handle used after Close.
	CodeUsage Code = 15
	// CodeTorch: libtorch reported an error (a wrong input shape in
	// forward, ...).
	CodeTorch Code = 16
	// CodeCallback: a forward function (a Go ForwardFunc) failed.
	CodeCallback Code = 17
	// CodeNotFound: a tensor name the checkpoint or container does not
	// hold.
	CodeNotFound Code = 18
	// CodePanic: an internal error (a panic inside the library), caught
	// at the boundary.
	CodePanic Code = 19
	// CodeLocked: another checkpoint manager, in this process or another,
	// holds the directory and prefix (OpenManager).
	CodeLocked Code = 20
	// CodeStorage: an object store (an s3://, gs:// or az:// URL) refused
	// or failed a request (a missing bucket or object, refused
	// credentials, an endpoint that does not answer within the bounded
	// retries), or a URL is malformed or of an unknown scheme. The
	// message names the URL.
	CodeStorage Code = 21
	// CodeUnsupportedClass: a class this library cannot build, though a
	// file may name it: PyTorch's LambdaLR and MultiplicativeLR (their
	// lr_lambda is a Python callable, which no file carries: load such a
	// file with the Python package, passing the lambda), SparseAdam. The
	// message names the class and says why.
	CodeUnsupportedClass Code = 22
)

var codeNames = [...]string{
	CodeNullArgument:       "null argument",
	CodeInvalidArgument:    "invalid argument",
	CodeInvalidJSON:        "invalid JSON",
	CodeIO:                 "I/O error",
	CodeFormat:             "invalid checkpoint",
	CodeUnsupportedVersion: "unsupported format version",
	CodeUnknownName:        "unknown class",
	CodeDuplicateName:      "duplicate name",
	CodeInvalidKwargs:      "invalid kwargs",
	CodeFactory:            "model factory failed",
	CodeInvalidMetadata:    "invalid metadata",
	CodeNotInitialized:     "container not initialized",
	CodeStateMismatch:      "state mismatch",
	CodeInvalidState:       "invalid state",
	CodeUsage:              "usage error",
	CodeTorch:              "libtorch error",
	CodeCallback:           "callback failed",
	CodeNotFound:           "not found",
	CodePanic:              "internal error",
	CodeLocked:             "locked",
	CodeStorage:            "object storage error",
	CodeUnsupportedClass:   "unsupported class",
}

// String returns a short description of the code, such as "not found".
func (c Code) String() string {
	if int(c) < len(codeNames) && codeNames[c] != "" {
		return codeNames[c]
	}
	return fmt.Sprintf("error code %d", uint32(c))
}

// Error is every error this package returns: a stable code, a finer
// kind and a message naming the problem (the file member, tensor, byte
// range or kwarg). Compare with the Err* sentinels through errors.Is,
// which matches on the code alone:
//
//	if errors.Is(err, pytorchsaver.ErrNotFound) { ... }
//
// or take it apart with errors.As and compare its Kind:
//
//	var e *pytorchsaver.Error
//	if errors.As(err, &e) && e.Kind == "CrcMismatch" { ... }
type Error struct {
	// Code is the stable error code.
	Code Code
	// Kind names the failure more finely than Code, as the library's
	// pts_error_kind does: for a file the reader refuses (CodeFormat,
	// CodeIO, CodeUnsupportedVersion) the check that failed, one of the
	// kinds of docs/FORMAT.md section 9 ("Truncated", "CrcMismatch",
	// "Schema", ...), the same string every language's reader reports for
	// the same file; for other errors the library error's kind
	// ("InvalidKwargs", "StateMismatch", "ReservedMetadataKey", ...) or,
	// for argument checks, callback errors and errors detected in Go, the
	// code's name ("NullArgument", "Usage", "Callback", ...). Kinds are
	// never renamed or reused, so a program may compare them; a new
	// failure gets a new kind. It is empty only in a sentinel.
	Kind string
	// Message says what failed; it may be empty only in a sentinel.
	Message string
}

// Error formats the error as "pytorchsaver: <code>: <message>".
func (e *Error) Error() string {
	if e.Message == "" {
		return "pytorchsaver: " + e.Code.String()
	}
	return "pytorchsaver: " + e.Code.String() + ": " + e.Message
}

// Is reports whether target is an *Error with the same code, so that
// errors.Is(err, ErrStateMismatch) holds for every state-mismatch error
// whatever its message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t != nil && t.Code == e.Code
}

// codeKinds is the kind of an error made from a bare code, the code's
// name, as the library gives one (pts_error_new, its argument checks).
var codeKinds = [...]string{
	CodeNullArgument:       "NullArgument",
	CodeInvalidArgument:    "InvalidArgument",
	CodeInvalidJSON:        "InvalidJson",
	CodeIO:                 "Io",
	CodeFormat:             "Format",
	CodeUnsupportedVersion: "UnsupportedVersion",
	CodeUnknownName:        "UnknownName",
	CodeDuplicateName:      "DuplicateName",
	CodeInvalidKwargs:      "InvalidKwargs",
	CodeFactory:            "Factory",
	CodeInvalidMetadata:    "InvalidMetadata",
	CodeNotInitialized:     "NotInitialized",
	CodeStateMismatch:      "StateMismatch",
	CodeInvalidState:       "InvalidState",
	CodeUsage:              "Usage",
	CodeTorch:              "Torch",
	CodeCallback:           "Callback",
	CodeNotFound:           "NotFound",
	CodePanic:              "Panic",
	CodeLocked:             "Locked",
	CodeStorage:            "Storage",
	CodeUnsupportedClass:   "UnsupportedClass",
}

// kind is the kind of an error made from the bare code c.
func (c Code) kind() string {
	if int(c) < len(codeKinds) && codeKinds[c] != "" {
		return codeKinds[c]
	}
	return "Callback" // the library's kind for a code it does not know
}

// errorf makes an *Error for a failure detected on the Go side; its kind
// is the code's name.
func errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Kind: code.kind(), Message: fmt.Sprintf(format, args...)}
}

// errClosed is the error of any call on a closed handle.
func errClosed(what string) *Error {
	return errorf(CodeUsage, "the %s is closed", what)
}

// Sentinel errors, one per code, for errors.Is. Their messages are empty;
// the errors the package returns carry the message.
var (
	// ErrNullArgument matches every error with CodeNullArgument.
	ErrNullArgument = &Error{Code: CodeNullArgument}
	// ErrInvalidArgument matches every error with CodeInvalidArgument.
	ErrInvalidArgument = &Error{Code: CodeInvalidArgument}
	// ErrInvalidJSON matches every error with CodeInvalidJSON.
	ErrInvalidJSON = &Error{Code: CodeInvalidJSON}
	// ErrIO matches every error with CodeIO.
	ErrIO = &Error{Code: CodeIO}
	// ErrFormat matches every error with CodeFormat.
	ErrFormat = &Error{Code: CodeFormat}
	// ErrUnsupportedVersion matches every error with CodeUnsupportedVersion.
	ErrUnsupportedVersion = &Error{Code: CodeUnsupportedVersion}
	// ErrUnknownName matches every error with CodeUnknownName.
	ErrUnknownName = &Error{Code: CodeUnknownName}
	// ErrDuplicateName matches every error with CodeDuplicateName.
	ErrDuplicateName = &Error{Code: CodeDuplicateName}
	// ErrInvalidKwargs matches every error with CodeInvalidKwargs.
	ErrInvalidKwargs = &Error{Code: CodeInvalidKwargs}
	// ErrFactory matches every error with CodeFactory.
	ErrFactory = &Error{Code: CodeFactory}
	// ErrInvalidMetadata matches every error with CodeInvalidMetadata.
	ErrInvalidMetadata = &Error{Code: CodeInvalidMetadata}
	// ErrNotInitialized matches every error with CodeNotInitialized.
	ErrNotInitialized = &Error{Code: CodeNotInitialized}
	// ErrStateMismatch matches every error with CodeStateMismatch.
	ErrStateMismatch = &Error{Code: CodeStateMismatch}
	// ErrInvalidState matches every error with CodeInvalidState.
	ErrInvalidState = &Error{Code: CodeInvalidState}
	// ErrUsage matches every error with CodeUsage.
	ErrUsage = &Error{Code: CodeUsage}
	// ErrTorch matches every error with CodeTorch.
	ErrTorch = &Error{Code: CodeTorch}
	// ErrCallback matches every error with CodeCallback.
	ErrCallback = &Error{Code: CodeCallback}
	// ErrNotFound matches every error with CodeNotFound.
	ErrNotFound = &Error{Code: CodeNotFound}
	// ErrPanic matches every error with CodePanic.
	ErrPanic = &Error{Code: CodePanic}
	// ErrLocked matches every error with CodeLocked.
	ErrLocked = &Error{Code: CodeLocked}
	// ErrStorage matches every error with CodeStorage.
	ErrStorage = &Error{Code: CodeStorage}
	// ErrUnsupportedClass matches every error with CodeUnsupportedClass.
	ErrUnsupportedClass = &Error{Code: CodeUnsupportedClass}
)
