package pytorchsaver

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Checkpoints at s3:// URLs against a real S3 API server: moto's, on a
// loopback port, started once for the test binary through
// tests/s3/moto_server.py. The server stops when the binary exits (its
// stdin, a pipe this process holds, reaches end of file).

// s3Bucket is the bucket the server is started with.
const s3Bucket = "pts-tests"

// repoRoot is the repository, found from this package's directory as the
// golden files are.
const repoRoot = "../.."

var moto struct {
	once     sync.Once
	endpoint string
	err      error
	// stdin is held open for the life of the binary: the server's EOF.
	stdin interface{ Close() error }
}

// venvPython is the repository venv's python, which has moto and the
// Python package.
func venvPython(t testing.TB) string {
	t.Helper()
	python, err := filepath.Abs(filepath.Join(repoRoot, ".venv", "bin", "python"))
	if err != nil {
		t.Fatal(err)
	}
	return python
}

// motoEndpoint starts the server on first use and points every client of
// the process (and of the processes it starts) at it through the
// standard AWS environment variables (moto_server.py's client_env).
func motoEndpoint(t testing.TB) string {
	t.Helper()
	python := venvPython(t)
	moto.once.Do(func() {
		script, err := filepath.Abs(filepath.Join(repoRoot, "tests", "s3", "moto_server.py"))
		if err != nil {
			moto.err = err
			return
		}
		cmd := exec.Command(python, script, "--bucket", s3Bucket)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			moto.err = err
			return
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			moto.err = err
			return
		}
		if err := cmd.Start(); err != nil {
			moto.err = err
			return
		}
		line, err := bufio.NewReader(stdout).ReadBytes('\n')
		var started struct{ Endpoint string }
		if err == nil {
			err = json.Unmarshal(line, &started)
		}
		if err != nil || started.Endpoint == "" {
			moto.err = errors.Join(errors.New("moto_server.py printed "+string(line)), err)
			return
		}
		moto.stdin, moto.endpoint = stdin, started.Endpoint
		for k, v := range map[string]string{
			"AWS_ENDPOINT_URL":      started.Endpoint,
			"AWS_ALLOW_HTTP":        "true",
			"AWS_ACCESS_KEY_ID":     "testing",
			"AWS_SECRET_ACCESS_KEY": "testing",
			"AWS_REGION":            "us-east-1",
			"AWS_DEFAULT_REGION":    "us-east-1",
		} {
			if err := os.Setenv(k, v); err != nil {
				moto.err = err
				return
			}
		}
	})
	if moto.err != nil {
		t.Fatalf("starting moto's S3 server: %v", moto.err)
	}
	return moto.endpoint
}

// loadAndForward loads the container at url, checks that its metadata
// holds the epoch given, and returns its forward of s3Input.
func loadAndForward(t *testing.T, url string, epoch float64) ([]float32, []int64) {
	t.Helper()
	loaded, meta, err := LoadContainer(url)
	if err != nil {
		t.Fatal(err)
	}
	defer loaded.Close()
	if meta["epoch"] != epoch {
		t.Errorf("metadata %v, want epoch %v", meta, epoch)
	}
	got, shape, err := loaded.Forward(s3Input, s3InputShape)
	if err != nil {
		t.Fatal(err)
	}
	return got, shape
}

// s3Input is the fixed input every forward below runs on.
var s3Input, s3InputShape = []float32{0.5, -1, 2, 0.25, -0.75, 1.5, 0, 3}, []int64{2, 4}

// A container saved from Go to s3:// loads back in Go from the URL Save
// returned, with the same outputs bit for bit.
func TestS3RoundTrip(t *testing.T) {
	motoEndpoint(t)
	c, err := NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Initialize(mlpSpec()); err != nil {
		t.Fatal(err)
	}
	url, err := c.Save("s3://"+s3Bucket+"/go", "run", map[string]any{"epoch": 3})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(url, "s3://"+s3Bucket+"/go/run_checkpoint_") || !strings.HasSuffix(url, ".zip") {
		t.Fatalf("Save returned %q", url)
	}
	want, _, err := c.Forward(s3Input, s3InputShape)
	if err != nil {
		t.Fatal(err)
	}

	got, _ := loadAndForward(t, url, 3)
	if !sameBits(got, want) {
		t.Fatalf("loaded from %s: %v, saved %v", url, got, want)
	}

	ckpt, err := OpenCheckpoint(url)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	if ckpt.ModelClass() != "pytorch_saver.models.MLP" {
		t.Errorf("model class %q", ckpt.ModelClass())
	}
}

// A store that refuses, or a URL no store serves, is an error of code
// CodeStorage and kind "Storage" that names the URL.
func TestS3ErrorsAreStorage(t *testing.T) {
	motoEndpoint(t)
	// The library's kind for the code is Go's.
	mustKind(t, takeError(newCError(CodeStorage, "m")), CodeStorage, "Storage")
	if CodeStorage.String() != "object storage error" {
		t.Errorf("CodeStorage.String() = %q", CodeStorage.String())
	}

	for _, url := range []string{"s3://no-such-bucket-xyz/k.zip", "foo://a/b.zip"} {
		_, _, err := LoadContainer(url)
		mustKind(t, err, CodeStorage, "Storage")
		mustCode(t, err, ErrStorage, url)
		_, err = OpenCheckpoint(url)
		mustKind(t, err, CodeStorage, "Storage")
		mustCode(t, err, ErrStorage, url)
	}

	c, err := NewContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Initialize(mlpSpec()); err != nil {
		t.Fatal(err)
	}
	path, err := c.Save("s3://no-such-bucket-xyz/go", "run", nil)
	mustKind(t, err, CodeStorage, "Storage")
	mustCode(t, err, ErrStorage, "s3://no-such-bucket-xyz/go")
	if path != "" {
		t.Errorf("a failed save returned %q", path)
	}
}

// pythonSavesToS3 is run by the venv's python: it saves a checkpoint of a
// freshly initialized MLP (with Adam) to the s3:// directory in argv[1]
// and prints its URL and the model's output on the fixed input, as the
// hex of its float32 bytes (little endian).
const pythonSavesToS3 = `
import sys
import torch
from pytorch_saver import ModelContainer
from pytorch_saver.models import MLP

container = ModelContainer()
objs = container.initialize(MLP, {"in_dim": 4, "hidden_dim": 8, "n_classes": 3}, torch.optim.Adam, {"lr": 0.01})
url = container.save(sys.argv[1], "py", epoch=7)
x = torch.tensor([0.5, -1, 2, 0.25, -0.75, 1.5, 0, 3], dtype=torch.float32).reshape(2, 4)
objs.model.eval()
with torch.no_grad():
    y = objs.model(x).contiguous()
print(url)
print(y.numpy().astype("<f4").tobytes().hex())
`

// A checkpoint the Python package saves to s3:// loads in Go from its
// URL, and the model gives Python's output bit for bit.
func TestS3PythonSavesGoLoads(t *testing.T) {
	motoEndpoint(t)
	cmd := exec.Command(venvPython(t), "-c", pythonSavesToS3, "s3://"+s3Bucket+"/go-from-python")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v", err)
	}
	lines := strings.Fields(string(out))
	if len(lines) != 2 {
		t.Fatalf("python printed %q", out)
	}
	url := lines[0]
	if !strings.HasPrefix(url, "s3://"+s3Bucket+"/go-from-python/py_checkpoint_") || !strings.HasSuffix(url, ".zip") {
		t.Fatalf("Python's save returned %q", url)
	}
	raw, err := hex.DecodeString(lines[1])
	if err != nil || len(raw) != 2*3*4 {
		t.Fatalf("python printed output %q: %v", lines[1], err)
	}
	want := make([]float32, len(raw)/4)
	for i := range want {
		want[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}

	got, shape := loadAndForward(t, url, 7)
	if len(shape) != 2 || shape[0] != 2 || shape[1] != 3 || !sameBits(got, want) {
		t.Fatalf("Go's forward of %s: %v %v; Python's %v", url, got, shape, want)
	}
}

// A checkpoint manager at an s3:// URL, through the C ABI: retention
// deletes objects, latest and list agree, a second manager is locked out
// while the first holds the lock object, and restoring the latest gives
// the parameters saved, bit for bit.
func TestS3Manager(t *testing.T) {
	motoEndpoint(t)
	dir := "s3://" + s3Bucket + "/go_manager"
	m := openManager(t, dir, Policy{Prefix: "run", KeepLast: 2})
	c := newManagedMLP(t)
	var paths []string
	for step := int64(1); step <= 4; step++ {
		paths = append(paths, mustSave(t, m, c, step, 1/float64(step)))
	}
	for _, p := range paths {
		if !strings.HasPrefix(p, dir+"/run_checkpoint_") {
			t.Fatalf("saved at %q", p)
		}
	}
	list, err := m.List()
	if err != nil || len(list) != 2 || list[0].Path != paths[2] || list[1].Path != paths[3] {
		t.Fatalf("list %+v %v, want the last two of %v", list, err, paths)
	}
	latest, err := m.Latest()
	if err != nil || latest == nil || latest.Step != 4 {
		t.Fatalf("latest %+v %v", latest, err)
	}
	// Retention deleted the others' objects (a name it freed may be
	// taken again by a later save in the same second, as on disk).
	present := map[string]bool{}
	for _, p := range paths {
		ckpt, err := OpenCheckpoint(p)
		if err == nil {
			present[p] = true
			ckpt.Close()
		} else {
			mustKind(t, err, CodeStorage, "Storage")
		}
	}
	if len(present) != 2 || !present[paths[2]] || !present[paths[3]] {
		t.Fatalf("objects present: %v of %v", present, paths)
	}
	_, err = OpenManager(dir, Policy{Prefix: "run"})
	mustKind(t, err, CodeLocked, "Locked")
	saved := parameterBytes(t, c)
	fresh := newManagedMLP(t)
	if _, _, err := m.RestoreLatest(fresh); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(parameterBytes(t, fresh), saved) {
		t.Fatal("restored parameters differ from the saved ones")
	}
}
