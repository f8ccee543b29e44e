package pytorchsaver

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
)

// A document with every part of docs/FORMAT.md sections 3, 5 and 6.
const fullMetadata = `{
  "model_kwargs": {"in_dim": 4, "hidden_dim": 32, "n_classes": 3},
  "optim_kwargs": {"lr": 0.001, "betas": [0.9, 0.999]},
  "scheduler_kwargs": {"patience": 1},
  "timestamp": 1795885728,
  "loss": 0.55,
  "epoch": 5,
  "tags": ["a", {"b": null}],
  "__pytorch_saver__": {
    "format_version": 1,
    "kind": "checkpoint",
    "model": {"class": "pytorch_saver.models.MLP"},
    "optimizer": {
      "class": "torch.optim.Adam",
      "param_groups": [
        {"lr": 0.001, "betas": [0.9, 0.999], "foreach": null, "params": [0, 1]},
        {"lr": 0.01, "betas": [0.9, {"__float__": "inf"}], "params": [2]}
      ],
      "param_names": ["fc1.weight", "fc1.bias", "fc2.weight"],
      "state": {"0": {}, "2": {"note": "x", "bound": {"__float__": "-inf"}}}
    },
    "scheduler": {
      "class": "torch.optim.lr_scheduler.ReduceLROnPlateau",
      "state": {"best": {"__float__": "inf"}, "last": {"__float__": "nan"}, "min_lrs": [0, 0], "milestones": {"30": 1}}
    },
    "producer": {"library": "pytorch-saver", "version": "0.1.0", "language": "rust", "torch_version": "2.13.0"},
    "added_by_a_later_writer": {"x": 1}
  }
}`

func TestParseMetadataTypesEveryPart(t *testing.T) {
	m, err := ParseMetadata(fullMetadata)
	if err != nil {
		t.Fatal(err)
	}
	last := m.Internals.Scheduler.State["last"]
	if f, ok := last.(float64); !ok || !math.IsNaN(f) {
		t.Fatalf("scheduler state last = %v, want NaN", last)
	}
	delete(m.Internals.Scheduler.State, "last") // NaN is not DeepEqual to itself
	want := &Metadata{
		ModelKwargs:     map[string]any{"in_dim": 4.0, "hidden_dim": 32.0, "n_classes": 3.0},
		OptimizerKwargs: map[string]any{"lr": 0.001, "betas": []any{0.9, 0.999}},
		SchedulerKwargs: map[string]any{"patience": 1.0},
		Timestamp:       1795885728,
		User:            map[string]any{"loss": 0.55, "epoch": 5.0, "tags": []any{"a", map[string]any{"b": nil}}},
		Internals: &Internals{
			FormatVersion: 1,
			Kind:          KindCheckpoint,
			ModelClass:    "pytorch_saver.models.MLP",
			Optimizer: &OptimizerInternals{
				Class: "torch.optim.Adam",
				ParamGroups: []ParamGroup{
					{Params: []int{0, 1}, Hyperparameters: map[string]any{"lr": 0.001, "betas": []any{0.9, 0.999}, "foreach": nil}},
					{Params: []int{2}, Hyperparameters: map[string]any{"lr": 0.01, "betas": []any{0.9, math.Inf(1)}}},
				},
				ParamNames: []string{"fc1.weight", "fc1.bias", "fc2.weight"},
				State:      map[int]map[string]any{0: {}, 2: {"note": "x", "bound": math.Inf(-1)}},
			},
			Scheduler: &SchedulerInternals{
				Class: "torch.optim.lr_scheduler.ReduceLROnPlateau",
				State: map[string]any{"best": math.Inf(1), "min_lrs": []any{0.0, 0.0}, "milestones": map[string]any{"30": 1.0}},
			},
			Producer: Producer{Library: "pytorch-saver", Version: "0.1.0", Language: "rust", TorchVersion: "2.13.0"},
		},
	}
	m.object = nil
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("parsed\n%#v\nwant\n%#v", m, want)
	}
}

// The object a Metadata keeps is the document as encoding/json decodes it,
// non-finite floats as the file writes them, and unknown internals kept.
func TestParseMetadataKeepsTheObject(t *testing.T) {
	m, err := ParseMetadata(fullMetadata)
	if err != nil {
		t.Fatal(err)
	}
	var decoded map[string]any
	if err := json.Unmarshal([]byte(fullMetadata), &decoded); err != nil {
		t.Fatal(err)
	}
	if got := m.objectCopy(); !reflect.DeepEqual(got, decoded) {
		t.Fatalf("object\n%v\nwant\n%v", got, decoded)
	}
	if _, err := json.Marshal(m.objectCopy()); err != nil {
		t.Fatalf("the object does not marshal back: %v", err)
	}
	// Copies share nothing.
	c := m.clone()
	c.ModelKwargs["in_dim"] = -1.0
	c.Internals.Optimizer.ParamGroups[0].Params[0] = 99
	c.Internals.Scheduler.State["best"] = 0.0
	c.User["tags"].([]any)[0] = "changed"
	if m.ModelKwargs["in_dim"] != 4.0 || m.Internals.Optimizer.ParamGroups[0].Params[0] != 0 ||
		m.Internals.Scheduler.State["best"] != math.Inf(1) || m.User["tags"].([]any)[0] != "a" {
		t.Fatal("a clone shares its values with the original")
	}
	m.objectCopy()["model_kwargs"].(map[string]any)["in_dim"] = -1.0
	if m.object["model_kwargs"].(map[string]any)["in_dim"] != 4.0 {
		t.Fatal("objectCopy shares its values with the original")
	}
}

// The flat metadata of a load has no internals; MetadataFromMap types it
// without keeping the caller's map.
func TestMetadataFromMap(t *testing.T) {
	flat := map[string]any{
		"model_kwargs": map[string]any{"in_features": 4.0, "out_features": 3.0},
		"timestamp":    1700000000.0,
		"note":         "x",
	}
	m, err := MetadataFromMap(flat)
	if err != nil {
		t.Fatal(err)
	}
	if m.Internals != nil || m.OptimizerKwargs != nil || m.SchedulerKwargs != nil || m.Timestamp != 1700000000 ||
		m.ModelKwargs["out_features"] != 3.0 || !reflect.DeepEqual(m.User, map[string]any{"note": "x"}) {
		t.Fatalf("%+v", m)
	}
	m.ModelKwargs["out_features"] = 5.0
	if flat["model_kwargs"].(map[string]any)["out_features"] != 3.0 {
		t.Fatal("MetadataFromMap shares the caller's map")
	}
	// json.Number, as a json.Decoder with UseNumber gives them, is read too.
	if m, err := MetadataFromMap(map[string]any{"model_kwargs": map[string]any{}, "timestamp": json.Number("7")}); err != nil || m.Timestamp != 7 {
		t.Fatalf("json.Number timestamp: %v, %v", m, err)
	}
	// No timestamp: 0, as a Checkpoint's Timestamp.
	if m, err := MetadataFromMap(map[string]any{"model_kwargs": map[string]any{}}); err != nil || m.Timestamp != 0 || len(m.User) != 0 || m.User == nil {
		t.Fatalf("minimal metadata: %+v, %v", m, err)
	}
	_, err = MetadataFromMap(nil)
	mustKind(t, err, CodeFormat, "Schema")
	_, err = MetadataFromMap(map[string]any{"model_kwargs": 1})
	mustKind(t, err, CodeFormat, "Schema")
}

func TestParseMetadataRefusals(t *testing.T) {
	const internals = `"__pytorch_saver__": {"format_version": 1, "kind": "inference", "model": {"class": "M"}, ` +
		`"producer": {"library": "pytorch-saver", "version": "0.1.0", "language": "go"}`
	valid := `{"model_kwargs": {}, ` + internals + `}}`
	if _, err := ParseMetadata(valid); err != nil {
		t.Fatalf("the base document: %v", err)
	}
	nest := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	cases := []struct {
		text, kind, needle string
	}{
		{`{`, "Json", "metadata.json"},
		{``, "Json", "metadata.json"},
		{`[1]`, "Json", "not an object"},
		{`{"model_kwargs": {}} {}`, "Json", "after the top-level value"},
		{`{"model_kwargs": {}, "a": 1, "a": 2}`, "Json", `key "a" appears twice`},
		{`{"model_kwargs": {"x": {"y": 1, "y": 1}}}`, "Json", `key "y" appears twice`},
		{`{"model_kwargs": {}, "big": 1e400}`, "Json", "does not fit a float64"},
		{`{"model_kwargs": {}, "deep": ` + nest(127) + `}`, "Json", "127 levels"},
		{`{"loss": 1}`, "Schema", "field model_kwargs: missing"},
		{`{"model_kwargs": []}`, "Schema", "field model_kwargs: must be an object"},
		{`{"model_kwargs": {}, "optim_kwargs": null}`, "Schema", "field optim_kwargs: must be an object"},
		{`{"model_kwargs": {}, "timestamp": -1}`, "Schema", "field timestamp"},
		{`{"model_kwargs": {}, "timestamp": 1.5}`, "Schema", "field timestamp"},
		{`{"model_kwargs": {}, "timestamp": "now"}`, "Schema", "field timestamp"},
		{`{"model_kwargs": {}, "__pytorch_saver__": []}`, "Schema", "field __pytorch_saver__: must be an object"},
		{strings.Replace(valid, `"format_version": 1`, `"format_version": "1"`, 1), "Schema", "format_version"},
		{strings.Replace(valid, `"kind": "inference"`, `"kind": 2`, 1), "Schema", "__pytorch_saver__.kind"},
		{strings.Replace(valid, `"model": {"class": "M"}`, `"model": {}`, 1), "Schema", "__pytorch_saver__.model.class: missing"},
		{strings.Replace(valid, `"language": "go"`, `"language": ""`, 1), "Schema", "producer.language: must be a non-empty string"},
		{strings.Replace(valid, `"model": {"class": "M"}`, `"model": {"class": "M"}, "scheduler": {"class": "S"}`, 1),
			"Schema", "scheduler.state: must be an object"},
		{strings.Replace(valid, `"model": {"class": "M"}`, `"model": {"class": "M"}, "scheduler": {"class": "S", "state": {"b": {"__float__": "big"}}}`, 1),
			"Schema", "scheduler.state.b"},
		{strings.Replace(valid, `"model": {"class": "M"}`, `"model": {"class": "M"}, "optimizer": 1`, 1), "Schema", "optimizer: must be an object"},
		{withOptimizer(valid, `"param_groups": [], "state": {}`), "Schema", "param_names"},
		{withOptimizer(valid, `"param_names": ["w", 1], "param_groups": [], "state": {}`), "Schema", "param_names[1]"},
		{withOptimizer(valid, `"param_names": ["w"], "param_groups": {}, "state": {}`), "Schema", "param_groups"},
		{withOptimizer(valid, `"param_names": ["w"], "param_groups": [1], "state": {}`), "Schema", "param_groups[0]: must be an object"},
		{withOptimizer(valid, `"param_names": ["w"], "param_groups": [{"params": [0.5]}], "state": {}`), "Schema", "param_groups[0].params"},
		{withOptimizer(valid, `"param_names": ["w"], "param_groups": [{"params": [0]}]`), "Schema", "optimizer.state: must be an object"},
		{withOptimizer(valid, `"param_names": ["w"], "param_groups": [{"params": [0]}], "state": {"00": {}}`), "Schema", `key "00"`},
		{withOptimizer(valid, `"param_names": ["w"], "param_groups": [{"params": [0]}], "state": {"0": 1}`), "Schema", "optimizer.state.0: must be an object"},
	}
	for _, c := range cases {
		_, err := ParseMetadata(c.text)
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, ErrFormat) || e.Kind != c.kind || !strings.Contains(e.Message, c.needle) {
			t.Errorf("%.80s...: %v (kind %q); want kind %q containing %q", c.text, err, kindOf(err), c.kind, c.needle)
		}
	}
	// 127 levels, the top-level object included, are allowed.
	if _, err := ParseMetadata(`{"model_kwargs": {}, "deep": ` + nest(126) + `}`); err != nil {
		t.Fatalf("127 levels: %v", err)
	}
}

// withOptimizer adds "optimizer": {"class": "O", fields} to the internals
// of a document.
func withOptimizer(doc, fields string) string {
	return strings.Replace(doc, `"model": {"class": "M"}`, `"model": {"class": "M"}, "optimizer": {"class": "O", `+fields+`}`, 1)
}

func kindOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return ""
}

// Every golden file's typed metadata holds every key of its object, and
// the checkpoint's accessors are views of it.
func TestGoldenTypedMetadata(t *testing.T) {
	plateau := 0
	for _, path := range goldenFiles(t) {
		ckpt, err := OpenCheckpoint(path)
		if err != nil {
			t.Fatal(err)
		}
		m := ckpt.TypedMetadata()
		in := m.Internals
		if in == nil || (m.ModelKwargs == nil) != (in.Kind == KindWeights) || m.Timestamp <= 0 {
			t.Fatalf("%s: %+v", path, m)
		}
		// Every top-level key is typed: the reserved ones, the rest user metadata.
		reserved := 1 // __pytorch_saver__
		for _, present := range []bool{m.ModelKwargs != nil, m.OptimizerKwargs != nil, m.SchedulerKwargs != nil, true} {
			if present {
				reserved++
			}
		}
		if n := len(ckpt.Metadata()); n != reserved+len(m.User) {
			t.Errorf("%s: %d top-level keys, %d typed", path, n, reserved+len(m.User))
		}
		if (m.OptimizerKwargs != nil) != (in.Optimizer != nil) || (m.SchedulerKwargs != nil) != (in.Scheduler != nil) {
			t.Errorf("%s: kwargs and internals disagree: %+v", path, m)
		}
		// The Metadata map is the document as encoding/json decodes it,
		// non-finite floats as the file writes them.
		var decoded map[string]any
		if err := json.Unmarshal([]byte(ckpt.MetadataJSON()), &decoded); err != nil {
			t.Fatal(err)
		}
		if got := ckpt.Metadata(); !reflect.DeepEqual(got, decoded) {
			t.Errorf("%s: Metadata()\n%v\nMetadataJSON decoded\n%v", path, got, decoded)
		}
		if _, err := json.Marshal(ckpt.Metadata()); err != nil {
			t.Errorf("%s: Metadata() does not marshal: %v", path, err)
		}
		if o := in.Optimizer; o != nil {
			checkOptimizerInternals(t, ckpt, o)
		}
		if s := in.Scheduler; s != nil {
			// ChainedScheduler has no epoch of its own: its children do.
			epochs := []any{s.State}
			if s.Class == "torch.optim.lr_scheduler.ChainedScheduler" {
				epochs, _ = s.State["_schedulers"].([]any)
			}
			if len(epochs) == 0 {
				t.Errorf("%s: scheduler state without children: %v", path, s.State)
			}
			for _, state := range epochs {
				st, _ := state.(map[string]any)
				if _, ok := st["last_epoch"].(float64); !ok {
					t.Errorf("%s: scheduler state without last_epoch: %v", path, state)
				}
			}
			if s.Class == "torch.optim.lr_scheduler.ReduceLROnPlateau" {
				if s.State["best"] != math.Inf(1) {
					t.Errorf("%s: ReduceLROnPlateau best = %v, want +Inf", path, s.State["best"])
				}
				plateau++
			}
		}
		ckpt.Close()
	}
	if plateau == 0 {
		t.Fatal("no golden file has a ReduceLROnPlateau: its +Inf was not checked")
	}
}

// checkOptimizerInternals checks a file's optimizer internals against its
// tensors: every parameter name is a model tensor, every index is in
// exactly one group, every optimizer tensor belongs to a parameter with
// state.
func checkOptimizerInternals(t *testing.T, ckpt *Checkpoint, o *OptimizerInternals) {
	t.Helper()
	model, err := ckpt.TensorNames(MemberModel)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range o.ParamNames {
		if !strings.Contains(strings.Join(model, "\n")+"\n", name+"\n") {
			t.Errorf("parameter %q is not a model tensor", name)
		}
	}
	groups := make([]int, len(o.ParamNames))
	for _, g := range o.ParamGroups {
		if _, ok := g.Hyperparameters["lr"].(float64); !ok {
			t.Errorf("a group without lr: %v", g.Hyperparameters)
		}
		for _, p := range g.Params {
			if p < 0 || p >= len(groups) {
				t.Fatalf("index %d of %d parameters", p, len(groups))
			}
			groups[p]++
		}
	}
	for i, n := range groups {
		if n != 1 {
			t.Errorf("parameter %d is in %d groups", i, n)
		}
	}
	names, err := ckpt.TensorNames(MemberOptimizer)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		var index int
		var key string
		rest, _ := strings.CutPrefix(name, "state.")
		dot := strings.IndexByte(rest, '.')
		if dot < 0 || json.Unmarshal([]byte(rest[:dot]), &index) != nil {
			t.Errorf("optimizer tensor %q", name)
			continue
		}
		key = rest[dot+1:]
		if entry, ok := o.State[index]; !ok || entry[key] != nil {
			t.Errorf("optimizer tensor %q: state entry %v, %v", name, entry, ok)
		}
	}
}
