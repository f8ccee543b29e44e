package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"

	pytorchsaver "github.com/pytorch-saver/pytorch-saver/bindings/go"
)

// options configure a server.
type options struct {
	// inputShape is one example's input shape (the batch is the outer
	// dimension); nil infers it from the model's kwargs.
	inputShape []int64
	// maxBody caps a request body, in bytes.
	maxBody int64
	// load says how the checkpoint is read (copy or map its tensors,
	// verify its CRCs or not).
	load pytorchsaver.LoadOptions
}

// modelInfo is what GET /info answers.
type modelInfo struct {
	Checkpoint  string                `json:"checkpoint"`
	ModelClass  string                `json:"model_class"`
	ModelKwargs map[string]any        `json:"model_kwargs"`
	Kind        pytorchsaver.Kind     `json:"kind"`
	Timestamp   int64                 `json:"timestamp"`
	Producer    pytorchsaver.Producer `json:"producer"`
	InputShape  []int64               `json:"input_shape"`
	// Concurrent says whether requests run the model in parallel (true
	// for the built-in models).
	Concurrent bool `json:"concurrent"`
}

// server answers predictions from one model loaded at start-up. The
// model is a pytorchsaver.Model, which any number of requests run at once:
// the server holds no lock around forward.
type server struct {
	model      *pytorchsaver.Model
	info       modelInfo
	inputShape []int64
	exampleLen int
	maxBody    int64
	mux        *http.ServeMux
}

// newServer loads the checkpoint at path over the built-in classes and
// returns the HTTP handler that serves it; Close frees the model.
func newServer(path string, opts options) (*server, error) {
	return newServerWith(nil, path, opts)
}

// newServerWith is newServer over registry's classes (nil: the built-in
// ones), so that a test can serve a model written in Go.
func newServerWith(registry *pytorchsaver.Registry, path string, opts options) (*server, error) {
	var model *pytorchsaver.Model
	var metadata map[string]any
	var err error
	if registry != nil {
		model, metadata, err = registry.LoadModel(path, opts.load)
	} else {
		model, metadata, err = pytorchsaver.LoadModel(path, opts.load)
	}
	if err != nil {
		return nil, err
	}
	s, err := newServerOf(model, metadata, path, opts)
	if err != nil {
		model.Close()
		return nil, err
	}
	return s, nil
}

// newServerOf serves a loaded model; metadata is what loading it
// returned.
func newServerOf(model *pytorchsaver.Model, metadata map[string]any, path string, opts options) (*server, error) {
	meta, err := pytorchsaver.MetadataFromMap(metadata)
	if err != nil {
		return nil, err
	}
	info := modelInfo{
		Checkpoint:  path,
		ModelClass:  model.Class(),
		ModelKwargs: meta.ModelKwargs,
		Concurrent:  model.Concurrent(),
	}
	// The file's kind and producer are not part of the flat metadata:
	// read them from its header, without checking the tensor data's
	// CRCs again (the load did), and make sure it is still the file that
	// was loaded.
	ckpt, err := pytorchsaver.OpenCheckpointWith(path, pytorchsaver.LoadOptions{SkipVerify: true})
	if err != nil {
		return nil, err
	}
	info.Kind, info.Producer, info.Timestamp = ckpt.Kind(), ckpt.Producer(), ckpt.Timestamp().Unix()
	fileClass := ckpt.ModelClass()
	ckpt.Close()
	if fileClass != info.ModelClass || meta.Timestamp != info.Timestamp {
		return nil, fmt.Errorf("%s changed on disk while it was loaded", path)
	}
	shape := opts.inputShape
	if shape == nil {
		if shape, err = inferInputShape(info.ModelClass, info.ModelKwargs); err != nil {
			return nil, err
		}
	}
	info.InputShape = shape
	s := &server{
		model:      model,
		info:       info,
		inputShape: shape,
		exampleLen: int(product(shape)),
		maxBody:    opts.maxBody,
		mux:        http.NewServeMux(),
	}
	if s.maxBody <= 0 {
		s.maxBody = 1 << 20
	}
	s.mux.HandleFunc("/predict", s.handlePredict)
	s.mux.HandleFunc("/healthz", s.handleHealthz)
	s.mux.HandleFunc("/info", s.handleInfo)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no endpoint %s (POST /predict, GET /healthz, GET /info)", r.URL.Path))
	})
	return s, nil
}

// ServeHTTP serves the endpoints.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Close frees the model, once the requests in flight have run it.
func (s *server) Close() error { return s.model.Close() }

// inferInputShape is one example's input shape for the models whose
// kwargs say it: a Linear's in_features, an MLP's in_dim, a Sequential
// starting with a Linear.
func inferInputShape(class string, kwargs map[string]any) ([]int64, error) {
	key := ""
	switch class {
	case "torch.nn.Linear":
		key = "in_features"
	case "pytorch_saver.models.MLP":
		key = "in_dim"
	case "pytorch_saver.models.Sequential":
		if layers, ok := kwargs["layers"].([]any); ok && len(layers) > 0 {
			if first, ok := layers[0].(map[string]any); ok && first["type"] == "Linear" {
				kwargs, key = first, "in_features"
			}
		}
	}
	if n, ok := kwargs[key].(float64); ok && key != "" && n >= 1 && n == math.Trunc(n) {
		return []int64{int64(n)}, nil
	}
	return nil, fmt.Errorf("cannot infer the input shape of a %s from its kwargs: pass -input-shape", class)
}

// parseShape parses "1,8,8" into a shape; "" is a scalar.
func parseShape(text string) ([]int64, error) {
	if strings.TrimSpace(text) == "" {
		return []int64{}, nil
	}
	var shape []int64
	for _, part := range strings.Split(text, ",") {
		d, err := strconv.ParseInt(strings.TrimSpace(part), 10, 64)
		if err != nil || d < 1 {
			return nil, fmt.Errorf("input shape %q: %q is not a dimension >= 1", text, part)
		}
		shape = append(shape, d)
	}
	return shape, nil
}

func product(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// predictRequest is the body of POST /predict: either inputs, a batch of
// examples, each a flat array of numbers or an array nested as the
// input shape; or input, a flat array, with shape, its whole shape, batch
// dimension first.
type predictRequest struct {
	Inputs []any     `json:"inputs"`
	Input  []float32 `json:"input"`
	Shape  []int64   `json:"shape"`
}

// predictResponse is the answer: each example's output values (flattened
// when an example's output has more than one dimension), its argmax, and
// the whole output's shape.
type predictResponse struct {
	Outputs     [][]float32 `json:"outputs"`
	Predictions []int       `json:"predictions"`
	OutputShape []int64     `json:"output_shape"`
}

// httpError is a failure with the status it answers.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) *httpError {
	return &httpError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

func (s *server) handlePredict(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "use POST for /predict")
		return
	}
	resp, err := s.predict(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		var he *httpError
		if !errors.As(err, &he) {
			he = &httpError{http.StatusInternalServerError, err.Error()}
		}
		if he.status >= 500 {
			log.Printf("POST /predict: %v", err)
		}
		writeError(w, he.status, he.msg)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// predict answers one request body.
func (s *server) predict(body io.Reader) (*predictResponse, error) {
	var req predictRequest
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, &httpError{http.StatusRequestEntityTooLarge,
				fmt.Sprintf("the request body is larger than %d bytes", tooLarge.Limit)}
		}
		return nil, badRequest("the body is not a valid request: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, badRequest("the body has data after the JSON object")
	}
	input, shape, err := s.batch(&req)
	if err != nil {
		return nil, err
	}
	// No lock: requests run the model concurrently.
	output, outShape, err := s.model.Forward(input, shape)
	if err != nil {
		if errors.Is(err, pytorchsaver.ErrTorch) || errors.Is(err, pytorchsaver.ErrCallback) ||
			errors.Is(err, pytorchsaver.ErrInvalidArgument) {
			return nil, badRequest("the model refused the input: %v", err)
		}
		return nil, err
	}
	return split(output, outShape, shape[0])
}

// batch checks a request against the input shape and returns the batch
// as one flat tensor and its shape.
func (s *server) batch(req *predictRequest) ([]float32, []int64, error) {
	switch {
	case req.Inputs != nil && (req.Input != nil || req.Shape != nil):
		return nil, nil, badRequest(`give either "inputs" or "input" with "shape", not both`)
	case req.Inputs != nil:
		if len(req.Inputs) == 0 {
			return nil, nil, badRequest(`"inputs" is empty`)
		}
		flat := make([]float32, 0, len(req.Inputs)*s.exampleLen)
		for i, example := range req.Inputs {
			var err error
			if flat, err = s.flatten(example, flat); err != nil {
				return nil, nil, badRequest("inputs[%d]: %v", i, err)
			}
		}
		return flat, append([]int64{int64(len(req.Inputs))}, s.inputShape...), nil
	case req.Input != nil || req.Shape != nil:
		if len(req.Shape) != len(s.inputShape)+1 || !slices.Equal(req.Shape[1:], s.inputShape) || req.Shape[0] < 1 {
			return nil, nil, badRequest("shape %v is not [batch %s]", req.Shape, strings.Trim(fmt.Sprint(s.inputShape), "[]"))
		}
		if req.Shape[0] > int64(len(req.Input)) || int64(len(req.Input)) != product(req.Shape) {
			return nil, nil, badRequest("input has %d numbers, shape %v needs %d", len(req.Input), req.Shape, product(req.Shape))
		}
		return req.Input, req.Shape, nil
	}
	return nil, nil, badRequest(`the body needs "inputs" (a list of examples) or "input" and "shape"`)
}

// flatten appends one example to flat: a flat array of the input shape's
// size, or arrays nested exactly as the input shape.
func (s *server) flatten(example any, flat []float32) ([]float32, error) {
	if values, ok := example.([]any); ok && len(values) == s.exampleLen && len(s.inputShape) > 1 {
		if out, err := appendNumbers(flat, values); err == nil {
			return out, nil
		}
	}
	out, err := appendNested(flat, example, s.inputShape)
	if err != nil && len(s.inputShape) > 1 {
		// Say what fits, not only where the nesting went wrong.
		return nil, fmt.Errorf("want %d numbers, flat or nested as %v: %v", s.exampleLen, s.inputShape, err)
	}
	return out, err
}

func appendNested(flat []float32, v any, shape []int64) ([]float32, error) {
	if len(shape) == 0 {
		return appendNumbers(flat, []any{v})
	}
	values, ok := v.([]any)
	if !ok || int64(len(values)) != shape[0] {
		return nil, fmt.Errorf("want an array of %d (for shape %v), got %s", shape[0], shape, describe(v))
	}
	if len(shape) == 1 {
		return appendNumbers(flat, values)
	}
	for _, item := range values {
		var err error
		if flat, err = appendNested(flat, item, shape[1:]); err != nil {
			return nil, err
		}
	}
	return flat, nil
}

func appendNumbers(flat []float32, values []any) ([]float32, error) {
	for _, v := range values {
		x, ok := v.(float64)
		if !ok {
			return nil, fmt.Errorf("want a number, got %s", describe(v))
		}
		if math.Abs(x) > math.MaxFloat32 {
			return nil, fmt.Errorf("%g does not fit a float32", x)
		}
		flat = append(flat, float32(x))
	}
	return flat, nil
}

// describe names a JSON value's kind for an error message.
func describe(v any) string {
	switch v := v.(type) {
	case []any:
		return fmt.Sprintf("an array of %d", len(v))
	case map[string]any:
		return "an object"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return "a number"
}

// split cuts the model's output into one row per example, with argmaxes.
func split(output []float32, shape []int64, batch int64) (*predictResponse, error) {
	if len(shape) == 0 || shape[0] != batch {
		return nil, fmt.Errorf("the model's output shape %v has no batch dimension of %d", shape, batch)
	}
	per := int(product(shape[1:]))
	resp := &predictResponse{OutputShape: shape}
	for i := range int(batch) {
		row := output[i*per : (i+1)*per]
		for _, v := range row {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("the model's output for example %d is not finite", i)
			}
		}
		best := 0
		for j, v := range row {
			if v > row[best] {
				best = j
			}
		}
		if per == 0 {
			best = -1
		}
		resp.Outputs = append(resp.Outputs, row)
		resp.Predictions = append(resp.Predictions, best)
	}
	return resp, nil
}

func (s *server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "use GET for /healthz")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *server) handleInfo(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "use GET for /info")
		return
	}
	writeJSON(w, http.StatusOK, s.info)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"error":"the answer is not representable as JSON"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
