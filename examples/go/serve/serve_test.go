package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pytorchsaver "github.com/pytorch-saver/pytorch-saver/bindings/go"
)

// goldenPath is a Rust-written MLP (4 -> 8 -> 3) whose sidecar records
// a forward on a [2, 4] input.
const goldenPath = "../../../tests/golden/v1/rust_mlp_inference.zip"

// runMainEnv makes the test binary run main instead of the tests, so
// that a test can start the real program as a subprocess.
const runMainEnv = "SERVE_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// goldenForward is the recorded forward of goldenPath.
func goldenForward(t *testing.T) (input []float32, shape []int64, output []float32) {
	t.Helper()
	return recordedForward(t, goldenPath)
}

// recordedForward is the forward a golden file's sidecar records.
func recordedForward(t *testing.T, path string) (input []float32, shape []int64, output []float32) {
	t.Helper()
	data, err := os.ReadFile(path + ".json")
	if err != nil {
		t.Fatal(err)
	}
	var sidecar struct {
		Forward struct {
			Input      []float64 `json:"input"`
			InputShape []int64   `json:"input_shape"`
			Output     []float64 `json:"output"`
		} `json:"forward"`
	}
	if err := json.Unmarshal(data, &sidecar); err != nil {
		t.Fatal(err)
	}
	f32 := func(v []float64) []float32 {
		out := make([]float32, len(v))
		for i, x := range v {
			out[i] = float32(x)
		}
		return out
	}
	return f32(sidecar.Forward.Input), sidecar.Forward.InputShape, f32(sidecar.Forward.Output)
}

// startServer serves goldenPath on a real loopback socket.
func startServer(t *testing.T) string {
	t.Helper()
	return startServing(t, goldenPath, options{maxBody: 64 << 10})
}

// startServing serves path with opts on a real loopback socket.
func startServing(t *testing.T, path string, opts options) string {
	t.Helper()
	s, err := newServer(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, s)
}

// serveOn serves s on a real loopback socket until the test ends, then
// closes it.
func serveOn(t *testing.T, s *server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := <-done; err != http.ErrServerClosed {
			t.Error(err)
		}
		s.Close()
	})
	return "http://" + ln.Addr().String()
}

// call makes one request and decodes the JSON answer into out.
func call(t *testing.T, method, url, body string, out any) (int, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, url, ct)
	}
	if err := json.Unmarshal(data, out); err != nil {
		t.Fatalf("%s %s: %d %q is not JSON: %v", method, url, resp.StatusCode, data, err)
	}
	return resp.StatusCode, resp.Header
}

// wantError checks a JSON error answer.
func wantError(t *testing.T, method, url, body string, status int) string {
	t.Helper()
	var answer map[string]string
	got, _ := call(t, method, url, body, &answer)
	if got != status || answer["error"] == "" {
		t.Fatalf("%s %s %.60q: %d %v, want %d with an error", method, url, body, got, answer, status)
	}
	return answer["error"]
}

func argmax(row []float32) int {
	best := 0
	for i, v := range row {
		if v > row[best] {
			best = i
		}
	}
	return best
}

// Predictions over a real HTTP request equal Container.Forward on the same
// input and the golden file's recorded output; bad requests get JSON
// errors and the server keeps serving.
func TestPredictOverLoopback(t *testing.T) {
	base := startServer(t)
	input, shape, golden := goldenForward(t)

	// What the binding computes directly.
	model, _, err := pytorchsaver.LoadContainer(goldenPath)
	if err != nil {
		t.Fatal(err)
	}
	direct, directShape, err := model.Forward(input, shape)
	model.Close()
	if err != nil {
		t.Fatal(err)
	}

	var health map[string]string
	if status, _ := call(t, "GET", base+"/healthz", "", &health); status != 200 || health["status"] != "ok" {
		t.Fatalf("healthz: %d %v", status, health)
	}
	var info modelInfo
	if status, _ := call(t, "GET", base+"/info", "", &info); status != 200 ||
		info.ModelClass != "pytorch_saver.models.MLP" || info.ModelKwargs["hidden_dim"] != 8.0 ||
		!slices.Equal(info.InputShape, []int64{4}) || info.Kind != pytorchsaver.KindInference {
		t.Fatalf("info: %d %+v", status, info)
	}

	rows := [][]float32{input[:4], input[4:]}
	batch, _ := json.Marshal(map[string]any{"inputs": rows})
	flat, _ := json.Marshal(map[string]any{"input": input, "shape": shape})
	check := func(body []byte) {
		t.Helper()
		var answer predictResponse
		status, _ := call(t, "POST", base+"/predict", string(body), &answer)
		if status != 200 {
			t.Fatalf("predict: %d %+v", status, answer)
		}
		if !slices.Equal(answer.OutputShape, directShape) || len(answer.Outputs) != 2 {
			t.Fatalf("output shape %v, %d rows; direct %v", answer.OutputShape, len(answer.Outputs), directShape)
		}
		for i, row := range answer.Outputs {
			// JSON carries float32s exactly: the server's answer is the
			// binding's bit for bit, and the golden output within 1e-6.
			if !slices.Equal(row, direct[3*i:3*i+3]) {
				t.Errorf("row %d: %v, direct %v", i, row, direct[3*i:3*i+3])
			}
			for j, v := range row {
				want := golden[3*i+j]
				if math.Abs(float64(v-want)) > 1e-6*math.Max(math.Abs(float64(want)), 1) {
					t.Errorf("row %d: %v, golden %v", i, row, golden[3*i:3*i+3])
				}
			}
			if answer.Predictions[i] != argmax(golden[3*i:3*i+3]) {
				t.Errorf("prediction %d: %d, golden argmax %d", i, answer.Predictions[i], argmax(golden[3*i:3*i+3]))
			}
		}
	}
	check(batch)
	check(flat)

	// Bad requests: JSON errors, never a crash.
	wantError(t, "POST", base+"/predict", `{"inputs": [[1, 2, 3, 4]`, 400)
	wantError(t, "POST", base+"/predict", `not json`, 400)
	wantError(t, "POST", base+"/predict", ``, 400)
	wantError(t, "POST", base+"/predict", `{"inputs": [[1, 2, 3]]}`, 400)
	wantError(t, "POST", base+"/predict", `{"inputs": [[1, 2, 3, 4, 5]]}`, 400)
	wantError(t, "POST", base+"/predict", `{"inputs": [[1, 2, "3", 4]]}`, 400)
	wantError(t, "POST", base+"/predict", `{"inputs": [[1, 2, 3, 1e300]]}`, 400)
	wantError(t, "POST", base+"/predict", `{"inputs": []}`, 400)
	wantError(t, "POST", base+"/predict", `{"inputs": [1, 2, 3, 4]}`, 400)
	wantError(t, "POST", base+"/predict", `{"input": [1, 2, 3, 4], "shape": [2, 2]}`, 400)
	wantError(t, "POST", base+"/predict", `{"input": [1, 2, 3], "shape": [1, 4]}`, 400)
	wantError(t, "POST", base+"/predict", `{"input": [], "shape": [4611686018427387904, 4]}`, 400)
	wantError(t, "POST", base+"/predict", `{"input": [], "shape": [0, 4]}`, 400)
	wantError(t, "POST", base+"/predict", `{"input": [1, 2, 3, 4], "shape": [1, 4], "inputs": [[1, 2, 3, 4]]}`, 400)
	wantError(t, "POST", base+"/predict", `{"colour": 1}`, 400)
	wantError(t, "POST", base+"/predict", `{}`, 400)
	wantError(t, "POST", base+"/predict", `{"inputs": [[1, 2, 3, 4]]} trailing`, 400)
	msg := wantError(t, "GET", base+"/predict", "", 405)
	if !strings.Contains(msg, "POST") {
		t.Errorf("405 message %q", msg)
	}
	_, header := call(t, "PUT", base+"/predict", "{}", new(map[string]string))
	if header.Get("Allow") != "POST" {
		t.Errorf("Allow: %q", header.Get("Allow"))
	}
	wantError(t, "POST", base+"/healthz", "", 405)
	wantError(t, "GET", base+"/nowhere", "", 404)
	huge := `{"inputs": [` + strings.Repeat("[1, 2, 3, 4], ", 10000) + `[1, 2, 3, 4]]}`
	wantError(t, "POST", base+"/predict", huge, 413)

	// Still serving, and concurrently.
	check(batch)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				check(flat)
			}
		}()
	}
	wg.Wait()
}

// -predict answers one request on stdout without serving.
func TestOneShotPredict(t *testing.T) {
	input, _, golden := goldenForward(t)
	body, _ := json.Marshal(map[string]any{"inputs": [][]float32{input[:4], input[4:]}})
	var stdout, stderr bytes.Buffer
	status := run(context.Background(), []string{"-checkpoint", goldenPath, "-predict", string(body)}, &stdout, &stderr)
	if status != 0 {
		t.Fatalf("status %d: %s %s", status, stdout.String(), stderr.String())
	}
	var answer predictResponse
	if err := json.Unmarshal(stdout.Bytes(), &answer); err != nil {
		t.Fatal(err)
	}
	if len(answer.Predictions) != 2 || answer.Predictions[1] != argmax(golden[3:]) {
		t.Fatalf("answer %+v", answer)
	}

	stdout.Reset()
	status = run(context.Background(), []string{"-checkpoint", goldenPath, "-input-shape", "4", "-predict", `{"inputs": [[1]]}`}, &stdout, &stderr)
	if status != 1 || !strings.Contains(stdout.String(), `"error"`) {
		t.Fatalf("a refused request: status %d, %s", status, stdout.String())
	}
	if status := run(context.Background(), nil, &stdout, &stderr); status != 2 {
		t.Fatalf("no -checkpoint: status %d", status)
	}
	if status := run(context.Background(), []string{"-checkpoint", goldenPath, "-input-shape", "4,x"}, &stdout, &stderr); status != 2 {
		t.Fatalf("bad -input-shape: status %d", status)
	}
	stderr.Reset()
	if status := run(context.Background(), []string{"-checkpoint", "no_such.zip"}, &stdout, &stderr); status != 1 ||
		!strings.Contains(stderr.String(), "no_such.zip") {
		t.Fatalf("missing checkpoint: status %d, %s", status, stderr.String())
	}
}

// The real program: it prints its address, serves, and exits 0 after
// SIGTERM, finishing gracefully.
func TestProgramServesUntilSIGTERM(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-checkpoint", goldenPath, "-addr", "127.0.0.1:0", "-input-shape", "4")
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			if addr, ok := strings.CutPrefix(scanner.Text(), "listening on "); ok {
				lines <- addr
			}
		}
		close(lines)
	}()
	var base string
	select {
	case base = <-lines:
	case <-time.After(60 * time.Second):
	}
	if base == "" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the program printed no address; stderr:\n%s", stderr.String())
	}
	var answer predictResponse
	if status, _ := call(t, "POST", base+"/predict", `{"input": [1, 2, 3, 4], "shape": [1, 4]}`, &answer); status != 200 || len(answer.Predictions) != 1 {
		t.Fatalf("predict: %d %+v", status, answer)
	}
	wantError(t, "POST", base+"/predict", `{"input": [1, 2, 3, 4], "shape": [4, 1]}`, 400)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v; stderr:\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "shutting down") {
		t.Errorf("stderr:\n%s", stderr.String())
	}
}

func TestInputShapes(t *testing.T) {
	cases := []struct {
		class  string
		kwargs string
		want   []int64
	}{
		{"torch.nn.Linear", `{"in_features": 4, "out_features": 3}`, []int64{4}},
		{"pytorch_saver.models.MLP", `{"in_dim": 8, "hidden_dim": 8, "n_classes": 3}`, []int64{8}},
		{"pytorch_saver.models.Sequential", `{"layers": [{"type": "Linear", "in_features": 5, "out_features": 2}]}`, []int64{5}},
		{"pytorch_saver.models.Sequential", `{"layers": [{"type": "Conv2d", "in_channels": 1}]}`, nil},
		{"my.Model", `{"in_dim": 3}`, nil},
		{"pytorch_saver.models.MLP", `{"in_dim": 2.5}`, nil},
	}
	for _, c := range cases {
		var kwargs map[string]any
		if err := json.Unmarshal([]byte(c.kwargs), &kwargs); err != nil {
			t.Fatal(err)
		}
		got, err := inferInputShape(c.class, kwargs)
		if c.want == nil {
			if err == nil || !strings.Contains(err.Error(), "-input-shape") {
				t.Errorf("%s %s: %v, %v; want an error", c.class, c.kwargs, got, err)
			}
		} else if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s %s: %v, %v; want %v", c.class, c.kwargs, got, err, c.want)
		}
	}
	for text, want := range map[string][]int64{"4": {4}, "1,8,8": {1, 8, 8}, " 2 , 3 ": {2, 3}, "": {}} {
		if got, err := parseShape(text); err != nil || !slices.Equal(got, want) {
			t.Errorf("parseShape(%q) = %v, %v", text, got, err)
		}
	}
	for _, text := range []string{"0", "-1", "x", "4,", "1.5"} {
		if got, err := parseShape(text); err == nil {
			t.Errorf("parseShape(%q) = %v, want an error", text, got)
		}
	}
}

// Examples nested as a multi-dimensional input shape, or flat.
func TestNestedInputs(t *testing.T) {
	s := &server{inputShape: []int64{2, 2}, exampleLen: 4}
	for _, body := range []string{`{"inputs": [[[1, 2], [3, 4]]]}`, `{"inputs": [[1, 2, 3, 4]]}`} {
		var req predictRequest
		if err := json.Unmarshal([]byte(body), &req); err != nil {
			t.Fatal(err)
		}
		flat, shape, err := s.batch(&req)
		if err != nil || !slices.Equal(flat, []float32{1, 2, 3, 4}) || !slices.Equal(shape, []int64{1, 2, 2}) {
			t.Errorf("%s: %v %v %v", body, flat, shape, err)
		}
	}
	for _, body := range []string{`{"inputs": [[[1, 2], [3]]]}`, `{"inputs": [[[1, 2, 3], [4]]]}`, `{"inputs": [[1, 2, 3]]}`} {
		var req predictRequest
		if err := json.Unmarshal([]byte(body), &req); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.batch(&req); err == nil {
			t.Errorf("%s: no error", body)
		} else if fmt.Sprint(err) == "" {
			t.Errorf("%s: empty error", body)
		}
	}
}

// The story: a conv net (Conv2d, BatchNorm2d, ReLU, MaxPool2d,
// Flatten, Linear) trained in Python is served from Go, with no model code
// in Go, and answers PyTorch's outputs within 1e-6.
func TestServesAPythonTrainedSequential(t *testing.T) {
	const path = "../../../tests/golden/v1/python_sequential_convnet_adam_warm_restarts.zip"
	base := startServing(t, path, options{inputShape: []int64{1, 6, 6}, maxBody: 64 << 10})
	input, shape, recorded := recordedForward(t, path)
	if !slices.Equal(shape, []int64{2, 1, 6, 6}) {
		t.Fatalf("recorded input shape %v", shape)
	}
	var info modelInfo
	if status, _ := call(t, "GET", base+"/info", "", &info); status != 200 ||
		info.ModelClass != "pytorch_saver.models.Sequential" || info.Producer.Language != "python" {
		t.Fatalf("info: %d %+v", status, info)
	}
	body, _ := json.Marshal(map[string]any{"inputs": [][]float32{input[:36], input[36:]}})
	predict := func() {
		t.Helper()
		var answer predictResponse
		if status, _ := call(t, "POST", base+"/predict", string(body), &answer); status != 200 {
			t.Fatalf("predict: %d %+v", status, answer)
		}
		if len(answer.Outputs) != 2 || len(answer.Outputs[0]) != 3 {
			t.Fatalf("outputs %v", answer.Outputs)
		}
		for i, row := range answer.Outputs {
			for j, v := range row {
				want := recorded[3*i+j]
				if math.Abs(float64(v-want)) > 1e-6*math.Max(math.Abs(float64(want)), 1) {
					t.Errorf("row %d: %v, PyTorch %v", i, row, recorded[3*i:3*i+3])
				}
			}
			if answer.Predictions[i] != argmax(recorded[3*i:3*i+3]) {
				t.Errorf("prediction %d: %d", i, answer.Predictions[i])
			}
		}
	}
	predict()
	// An image of the wrong size is refused before the model sees it.
	msg := wantError(t, "POST", base+"/predict", `{"inputs": [[1, 2, 3, 4]]}`, 400)
	if !strings.Contains(msg, "36") {
		t.Errorf("wrong-shape message %q does not say what fits", msg)
	}
	// A shape the model cannot take (the flag's promise broken by the
	// model) is a 400 naming the layer, and the server goes on.
	bad := startServing(t, path, options{inputShape: []int64{1, 4, 4}, maxBody: 64 << 10})
	msg = wantError(t, "POST", bad+"/predict", `{"inputs": [[`+strings.TrimSuffix(strings.Repeat("0.5, ", 16), ", ")+`]]}`, 400)
	if !strings.Contains(msg, "layer 5 (Linear)") {
		t.Errorf("model error %q does not name the layer", msg)
	}
	predict()
}

// concurrentClient is an HTTP client for many requests at once; its idle
// connections are closed before the server shuts down (call it after
// serveOn), so that Shutdown need not wait for a connection it dialed
// but never used.
func concurrentClient(t *testing.T) *http.Client {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	t.Cleanup(client.CloseIdleConnections)
	return client
}

// requestInputs is count distinct examples, each base varied.
func requestInputs(base []float32, count int) [][]float32 {
	inputs := make([][]float32, count)
	for i := range inputs {
		inputs[i] = make([]float32, len(base))
		for j, v := range base {
			inputs[i][j] = v*(1+float32(i)/16) + float32(i%7)/10 - float32(j%3)/5
		}
	}
	return inputs
}

// 64 concurrent requests to the golden model answer exactly what the same
// 64 requests answer one after another.
func TestConcurrentPredictionsMatchSequential(t *testing.T) {
	base := startServer(t)
	client := concurrentClient(t)
	input, _, _ := goldenForward(t)
	var info modelInfo
	if status, _ := call(t, "GET", base+"/info", "", &info); status != 200 || !info.Concurrent {
		t.Fatalf("info: %d %+v", status, info)
	}
	inputs := requestInputs(input[:4], 64)
	predict := func(i int) predictResponse {
		body, _ := json.Marshal(map[string]any{"inputs": [][]float32{inputs[i]}})
		var answer predictResponse
		req, err := http.NewRequest("POST", base+"/predict", bytes.NewReader(body))
		if err != nil {
			panic(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return predictResponse{OutputShape: []int64{-1}}
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&answer) != nil {
			return predictResponse{OutputShape: []int64{int64(-resp.StatusCode)}}
		}
		return answer
	}
	sequential := make([]predictResponse, len(inputs))
	for i := range inputs {
		sequential[i] = predict(i)
		if len(sequential[i].Outputs) != 1 || len(sequential[i].Outputs[0]) != 3 {
			t.Fatalf("request %d: %+v", i, sequential[i])
		}
	}
	concurrent := make([]predictResponse, len(inputs))
	var wg sync.WaitGroup
	for i := range inputs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			concurrent[i] = predict(i)
		}()
	}
	wg.Wait()
	for i := range inputs {
		got, want := concurrent[i], sequential[i]
		if len(got.Outputs) != 1 || !slices.Equal(got.OutputShape, want.OutputShape) ||
			!slices.Equal(got.Predictions, want.Predictions) {
			t.Fatalf("request %d: concurrent %+v, sequential %+v", i, got, want)
		}
		// JSON carries float32s exactly: the same bits.
		if !slices.EqualFunc(got.Outputs[0], want.Outputs[0], func(a, b float32) bool {
			return math.Float32bits(a) == math.Float32bits(b)
		}) {
			t.Fatalf("request %d: concurrent %v, sequential %v", i, got.Outputs[0], want.Outputs[0])
		}
	}
}

// probe records how many forward calls of a Go model run at once.
type probe struct {
	inFlight, max, calls atomic.Int64
	// rendezvous: a call waits (up to 10 s) until it has seen another
	// call in flight, so that a server running requests in parallel shows
	// it whatever the scheduling; otherwise a call sleeps 2 ms.
	rendezvous bool
}

func (p *probe) forward(x []float32, shape []int64) ([]float32, []int64) {
	p.calls.Add(1)
	n := p.inFlight.Add(1)
	defer p.inFlight.Add(-1)
	for {
		m := p.max.Load()
		if n <= m || p.max.CompareAndSwap(m, n) {
			break
		}
	}
	if p.rendezvous {
		deadline := time.Now().Add(10 * time.Second)
		for p.max.Load() < 2 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	} else {
		time.Sleep(2 * time.Millisecond)
	}
	y := make([]float32, len(x))
	for i, v := range x {
		y[i] = 2 * v
	}
	return y, shape
}

// probeRegistry registers class: y = 2x over 3 features, with a weight
// saved in the file, its forward declared thread-safe when threadSafe.
func probeRegistry(t *testing.T, class string, p *probe, threadSafe bool) *pytorchsaver.Registry {
	t.Helper()
	r, err := pytorchsaver.NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	err = r.RegisterModel(class, func(kw *pytorchsaver.Kwargs, loading bool, model *pytorchsaver.ModelBuilder) error {
		var w *pytorchsaver.Tensor
		var err error
		if loading {
			w, err = pytorchsaver.EmptyTensor(pytorchsaver.Float32, []int64{3})
		} else {
			w, err = pytorchsaver.NewTensorOf([]float32{2, 2, 2}, []int64{3})
		}
		if err != nil {
			return err
		}
		if err := model.AddParameter("weight", w); err != nil {
			return err
		}
		if threadSafe {
			if err := model.SetThreadSafe(); err != nil {
				return err
			}
		}
		return model.SetForward(func(x []float32, shape []int64, train bool) ([]float32, []int64, error) {
			if len(shape) != 2 || shape[1] != 3 {
				return nil, nil, fmt.Errorf("want [batch 3], got %v", shape)
			}
			y, s := p.forward(x, shape)
			return y, s, nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Concurrent requests overlap inside the model when it is thread-safe
// (the server holds no lock around forward), and never when the model
// did not declare itself thread-safe (the library runs it one call at a
// time): outcomes, not wall-clock times.
func TestConcurrentRequestsOverlap(t *testing.T) {
	for _, threadSafe := range []bool{true, false} {
		t.Run(fmt.Sprint("threadSafe=", threadSafe), func(t *testing.T) {
			const class = "serve.test.Probe"
			p := &probe{rendezvous: threadSafe}
			r := probeRegistry(t, class, p, threadSafe)
			c, err := r.NewContainer()
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Initialize(pytorchsaver.Spec{Model: class}); err != nil {
				t.Fatal(err)
			}
			path, err := c.SaveInference(t.TempDir(), "probe", map[string]any{"note": "test"})
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
			s, err := newServerWith(r, path, options{inputShape: []int64{3}})
			if err != nil {
				t.Fatal(err)
			}
			base := serveOn(t, s)
			client := concurrentClient(t)
			var info modelInfo
			if status, _ := call(t, "GET", base+"/info", "", &info); status != 200 || info.ModelClass != class ||
				info.Concurrent != threadSafe || info.Kind != pytorchsaver.KindInference || info.Producer.Language != "go" {
				t.Fatalf("info: %d %+v", status, info)
			}
			const n = 16
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					k := float32(i)
					body, _ := json.Marshal(map[string]any{"inputs": [][]float32{{k, k + 1, k + 2}}})
					resp, err := client.Post(base+"/predict", "application/json", bytes.NewReader(body))
					if err != nil {
						errs <- err
						return
					}
					defer resp.Body.Close()
					var answer predictResponse
					if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil || resp.StatusCode != 200 {
						errs <- fmt.Errorf("request %d: %d %v", i, resp.StatusCode, err)
						return
					}
					if len(answer.Outputs) != 1 || !slices.Equal(answer.Outputs[0], []float32{2 * k, 2*k + 2, 2*k + 4}) ||
						answer.Predictions[0] != 2 {
						errs <- fmt.Errorf("request %d: %+v", i, answer)
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if p.calls.Load() != n {
				t.Fatalf("%d forward calls, want %d", p.calls.Load(), n)
			}
			if threadSafe && p.max.Load() < 2 {
				t.Fatalf("concurrent requests never ran the model at the same time")
			}
			if !threadSafe && p.max.Load() != 1 {
				t.Fatalf("a model that is not thread-safe ran %d calls at once", p.max.Load())
			}
		})
	}
}

// -copy and -skip-verify reach the loader: a file with one flipped byte
// of tensor data is refused by default and served with -skip-verify.
func TestLoadFlags(t *testing.T) {
	data, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatal(err)
	}
	ckpt, err := pytorchsaver.OpenCheckpoint(goldenPath)
	if err != nil {
		t.Fatal(err)
	}
	tensor, _, err := ckpt.ReadBytes(pytorchsaver.MemberModel, "fc1.weight")
	ckpt.Close()
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(data, tensor)
	if at < 0 {
		t.Fatal("fc1.weight is not stored uncompressed")
	}
	data[at+9] ^= 0x10
	corrupt := t.TempDir() + "/corrupt.zip"
	if err := os.WriteFile(corrupt, data, 0o644); err != nil {
		t.Fatal(err)
	}
	body := `{"inputs": [[1, 2, 3, 4]]}`
	var stdout, stderr bytes.Buffer
	if status := run(context.Background(), []string{"-checkpoint", corrupt, "-predict", body}, &stdout, &stderr); status != 1 ||
		!strings.Contains(stderr.String(), "invalid checkpoint") {
		t.Fatalf("a corrupt file: status %d, %s", status, stderr.String())
	}
	for _, flags := range [][]string{{"-skip-verify"}, {"-skip-verify", "-copy"}} {
		stdout.Reset()
		stderr.Reset()
		args := append(flags, "-checkpoint", corrupt, "-predict", body)
		if status := run(context.Background(), args, &stdout, &stderr); status != 0 || !strings.Contains(stdout.String(), `"predictions"`) {
			t.Fatalf("%v: status %d, %s %s", flags, status, stdout.String(), stderr.String())
		}
	}
	stdout.Reset()
	if status := run(context.Background(), []string{"-copy", "-checkpoint", goldenPath, "-predict", body}, &stdout, &stderr); status != 0 {
		t.Fatalf("-copy: status %d, %s %s", status, stdout.String(), stderr.String())
	}
}
