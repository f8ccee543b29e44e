package pytorchsaver

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
)

// A version 2 document with every tag of docs/FORMAT.md section 11.2,
// extra state and a manager block.
const v2Metadata = `{
  "model_kwargs": {
    "in_features": 4,
    "dtype": {"__type__": "dtype", "name": "bfloat16"},
    "block": {"__type__": "class", "name": "torchvision.models.resnet.BasicBlock"},
    "sizes": {"__type__": "tuple", "items": [1, {"__type__": "tuple", "items": []}, [2, 3]]},
    "by_id": {"__type__": "dict", "items": [[1, "one"], [{"__type__": "tuple", "items": [2, 3]}, {"__type__": "float", "value": "-inf"}]]},
    "typed_key": {"__type__": "dict", "items": [["__type__", "x"]]},
    "config": {"__type__": "object", "codec": "dataclass", "class": "mypkg.Config",
               "fields": {"depth": 3, "act": {"__type__": "class", "name": "torch.nn.ReLU"}, "__type__": 1}},
    "ns": {"__type__": "object", "codec": "namespace", "class": null, "fields": {}},
    "plain": {"a": [true, null, "s", 0.5]}
  },
  "optim_kwargs": {"lr": 0.001, "betas": {"__type__": "tuple", "items": [0.9, 0.99]}, "eps": {"__type__": "float", "value": "inf"}},
  "scheduler_kwargs": {
    "schedulers": [{"__type__": "spec", "class": "torch.optim.lr_scheduler.LambdaLR",
                    "kwargs": {"lr_lambda": {"__type__": "callable", "name": "train.warmup"}}}],
    "milestones": [5]
  },
  "timestamp": 1800000000,
  "note": {"__type__": "tuple", "items": [1]},
  "__pytorch_saver__": {
    "format_version": 2,
    "kind": "checkpoint",
    "model": {"class": "mypkg.Net"},
    "optimizer": {"class": "torch.optim.Adam", "param_groups": [{"lr": 0.001, "params": [0]}], "param_names": ["w"], "state": {}},
    "scheduler": {"class": "torch.optim.lr_scheduler.SequentialLR", "state": {"last_epoch": 0}},
    "extra": {
      "scaler": {"class": "torch.amp.GradScaler", "state": {"scale": 65536.0, "_growth_tracker": 0}},
      "rng": {"class": "pytorch_saver.RNG", "state": {
        "torch": {"cpu": {"__type__": "tensor", "name": "rng.torch.cpu"}, "cuda": [{"__type__": "tensor", "name": "rng.torch.cuda.0"}]},
        "python": {"__type__": "tuple", "items": [3, {"__type__": "tuple", "items": [1, 2, 624]}, null]}}},
      "counters": {"class": "pytorch_saver.Counters", "state": {"step": 30, "epoch": 2}}
    },
    "manager": {"id": "run-7", "step": 30, "metrics": {"loss": 0.25, "acc": 1}},
    "producer": {"library": "pytorch-saver", "version": "0.2.0", "language": "python"}
  }
}`

func TestParseMetadataDecodesEveryTagOfVersion2(t *testing.T) {
	m, err := ParseMetadata(v2Metadata)
	if err != nil {
		t.Fatal(err)
	}
	byID := m.ModelKwargs["by_id"].(Dict)
	if f, ok := byID[1].Value.(float64); !ok || !math.IsInf(f, -1) {
		t.Fatalf("by_id's second value: %v, want -Inf", byID[1].Value)
	}
	byID[1].Value = nil // -Inf compares equal, but keep the literal below plain
	wantModel := map[string]any{
		"in_features": 4.0,
		"dtype":       TorchDtype{Name: "bfloat16"},
		"block":       ClassRef{Name: "torchvision.models.resnet.BasicBlock"},
		"sizes":       Tuple{1.0, Tuple{}, []any{2.0, 3.0}},
		"by_id":       Dict{{Key: 1.0, Value: "one"}, {Key: Tuple{2.0, 3.0}, Value: nil}},
		"typed_key":   Dict{{Key: "__type__", Value: "x"}},
		"config": CodecObject{Codec: "dataclass", Class: "mypkg.Config",
			Fields: map[string]any{"depth": 3.0, "act": ClassRef{Name: "torch.nn.ReLU"}, "__type__": 1.0}},
		"ns":    CodecObject{Codec: "namespace", Fields: map[string]any{}},
		"plain": map[string]any{"a": []any{true, nil, "s", 0.5}},
	}
	if !reflect.DeepEqual(m.ModelKwargs, wantModel) {
		t.Errorf("model_kwargs\n%#v\nwant\n%#v", m.ModelKwargs, wantModel)
	}
	if betas, ok := m.OptimizerKwargs["betas"].(Tuple); !ok || !reflect.DeepEqual(betas, Tuple{0.9, 0.99}) {
		t.Errorf("betas = %#v, want Tuple{0.9, 0.99}", m.OptimizerKwargs["betas"])
	}
	if m.OptimizerKwargs["eps"] != math.Inf(1) {
		t.Errorf("eps = %v, want +Inf", m.OptimizerKwargs["eps"])
	}
	wantScheduler := map[string]any{
		"schedulers": []any{ClassSpec{Class: "torch.optim.lr_scheduler.LambdaLR",
			Kwargs: map[string]any{"lr_lambda": CallableRef{Name: "train.warmup"}}}},
		"milestones": []any{5.0},
	}
	if !reflect.DeepEqual(m.SchedulerKwargs, wantScheduler) {
		t.Errorf("scheduler_kwargs\n%#v\nwant\n%#v", m.SchedulerKwargs, wantScheduler)
	}
	// User metadata is plain JSON: "__type__" means nothing there.
	if !reflect.DeepEqual(m.User["note"], map[string]any{"__type__": "tuple", "items": []any{1.0}}) {
		t.Errorf("user metadata decoded: %#v", m.User["note"])
	}
	in := m.Internals
	if in.FormatVersion != 2 || in.Kind != KindCheckpoint || in.ModelClass != "mypkg.Net" {
		t.Errorf("internals %+v", in)
	}
	// The extra entries come in file order, their states typed.
	wantExtra := []ExtraEntry{
		{Name: "scaler", Class: "torch.amp.GradScaler", State: map[string]any{"scale": 65536.0, "_growth_tracker": 0.0}},
		{Name: "rng", Class: "pytorch_saver.RNG", State: map[string]any{
			"torch":  map[string]any{"cpu": TensorRef{Name: "rng.torch.cpu"}, "cuda": []any{TensorRef{Name: "rng.torch.cuda.0"}}},
			"python": Tuple{3.0, Tuple{1.0, 2.0, 624.0}, nil},
		}},
		{Name: "counters", Class: "pytorch_saver.Counters", State: map[string]any{"step": 30.0, "epoch": 2.0}},
	}
	if !reflect.DeepEqual(in.Extra, wantExtra) {
		t.Errorf("extra\n%#v\nwant\n%#v", in.Extra, wantExtra)
	}
	wantManager := &ManagerRecord{ID: "run-7", Step: 30, Metrics: map[string]float64{"loss": 0.25, "acc": 1}}
	if !reflect.DeepEqual(in.Manager, wantManager) {
		t.Errorf("manager %+v, want %+v", in.Manager, wantManager)
	}
	// The object keeps the tags as the file writes them.
	if got := m.objectCopy()["optim_kwargs"].(map[string]any)["betas"]; !reflect.DeepEqual(got,
		map[string]any{"__type__": "tuple", "items": []any{0.9, 0.99}}) {
		t.Errorf("the object's betas: %#v", got)
	}
}

// json.Marshal of typed values writes their tags back: the typed kwargs
// and extra states marshal to the document's JSON.
func TestTypedValuesMarshalToTheirTags(t *testing.T) {
	m, err := ParseMetadata(v2Metadata)
	if err != nil {
		t.Fatal(err)
	}
	raw := m.objectCopy()
	m.ModelKwargs["by_id"].(Dict)[1].Value = map[string]any{"__type__": "float", "value": "-inf"}
	delete(m.OptimizerKwargs, "eps") // encoding/json refuses +Inf
	delete(raw["optim_kwargs"].(map[string]any), "eps")
	for _, part := range []struct {
		typed, raw any
	}{
		{m.ModelKwargs, raw["model_kwargs"]},
		{m.OptimizerKwargs, raw["optim_kwargs"]},
		{m.SchedulerKwargs, raw["scheduler_kwargs"]},
		{m.Internals.Extra[1].State, raw["__pytorch_saver__"].(map[string]any)["extra"].(map[string]any)["rng"].(map[string]any)["state"]},
	} {
		if got := asJSON(t, part.typed); !reflect.DeepEqual(got, part.raw) {
			t.Errorf("marshalled\n%v\nwant\n%v", got, part.raw)
		}
	}
	// Empty values still write every key of their tag.
	for _, c := range []struct {
		v    any
		want string
	}{
		{Tuple(nil), `{"__type__":"tuple","items":[]}`},
		{Dict(nil), `{"__type__":"dict","items":[]}`},
		{ClassSpec{}, `{"__type__":"spec","class":"","kwargs":{}}`},
		{TensorRef{"x"}, `{"__type__":"tensor","name":"x"}`},
	} {
		if text, err := json.Marshal(c.v); err != nil || string(text) != c.want {
			t.Errorf("%#v marshals to %s, %v; want %s", c.v, text, err, c.want)
		}
	}
	if text, err := json.Marshal(CodecObject{Codec: "namespace"}); err != nil ||
		string(text) != `{"__type__":"object","class":null,"codec":"namespace","fields":{}}` {
		t.Errorf("CodecObject: %s, %v", text, err)
	}
}

// A version 1 document's kwargs are plain JSON: a "__type__" key is data
// (docs/FORMAT.md section 11.7), and extra or manager keys are unknown
// internals, ignored.
func TestVersion1KwargsStayPlain(t *testing.T) {
	const v1 = `{
	  "model_kwargs": {"spec": {"__type__": "tuple", "items": 3}, "odd": {"__type__": "nonsense"}},
	  "timestamp": 1,
	  "__pytorch_saver__": {"format_version": 1, "kind": "inference", "model": {"class": "M"},
	    "extra": 5, "manager": [],
	    "producer": {"library": "pytorch-saver", "version": "0.1.0", "language": "rust"}}
	}`
	m, err := ParseMetadata(v1)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"spec": map[string]any{"__type__": "tuple", "items": 3.0},
		"odd":  map[string]any{"__type__": "nonsense"},
	}
	if !reflect.DeepEqual(m.ModelKwargs, want) {
		t.Errorf("v1 model_kwargs %#v, want %#v", m.ModelKwargs, want)
	}
	if m.Internals.Extra != nil || m.Internals.Manager != nil {
		t.Errorf("a v1 document's extra/manager read: %+v", m.Internals)
	}
	// The same kwargs in a version 2 document are tags, refused.
	v2 := strings.Replace(v1, `"format_version": 1`, `"format_version": 2`, 1)
	_, err = ParseMetadata(strings.Replace(v2, `"extra": 5, "manager": [],`, "", 1))
	mustKind(t, err, CodeFormat, "TypedValue")
	// And in version 2, extra and manager are the format's.
	_, err = ParseMetadata(v2)
	mustKind(t, err, CodeFormat, "Schema")
}

// A weights file names no model: no model class and no model_kwargs.
func TestParseMetadataWeightsKind(t *testing.T) {
	const weights = `{"timestamp": 5, "source": "shards",
	  "__pytorch_saver__": {"format_version": 2, "kind": "weights",
	    "producer": {"library": "pytorch-saver", "version": "0.2.0", "language": "rust"}}}`
	m, err := ParseMetadata(weights)
	if err != nil {
		t.Fatal(err)
	}
	if m.Internals.Kind != KindWeights || m.Internals.ModelClass != "" || m.ModelKwargs != nil ||
		m.OptimizerKwargs != nil || !reflect.DeepEqual(m.User, map[string]any{"source": "shards"}) {
		t.Errorf("weights metadata %+v, internals %+v", m, m.Internals)
	}
	if c := m.clone(); c.Internals.Kind != KindWeights || c.ModelKwargs != nil {
		t.Errorf("clone %+v", c)
	}
	_, err = ParseMetadata(strings.Replace(weights, `"timestamp": 5`, `"model_kwargs": {}, "timestamp": 5`, 1))
	mustKind(t, err, CodeFormat, "Schema")
	_, err = ParseMetadata(strings.Replace(weights, `"kind": "weights"`, `"kind": "weights", "model": {"class": "M"}`, 1))
	mustKind(t, err, CodeFormat, "Schema")
	_, err = ParseMetadata(strings.Replace(weights, `"kind": "weights"`, `"kind": "inference"`, 1))
	mustKind(t, err, CodeFormat, "Schema")
}

// Clones and accessor copies of typed values share nothing.
func TestTypedValuesAreCopied(t *testing.T) {
	m, err := ParseMetadata(v2Metadata)
	if err != nil {
		t.Fatal(err)
	}
	c := m.clone()
	if names := []string{c.Internals.Extra[0].Name, c.Internals.Extra[1].Name, c.Internals.Extra[2].Name}; !reflect.DeepEqual(names, []string{"scaler", "rng", "counters"}) {
		t.Errorf("a clone's extra order: %v", names)
	}
	c.OptimizerKwargs["betas"].(Tuple)[0] = 0.0
	c.ModelKwargs["config"].(CodecObject).Fields["depth"] = 0.0
	c.ModelKwargs["by_id"].(Dict)[0].Value = "changed"
	if m.OptimizerKwargs["betas"].(Tuple)[0] != 0.9 || m.ModelKwargs["config"].(CodecObject).Fields["depth"] != 3.0 ||
		m.ModelKwargs["by_id"].(Dict)[0].Value != "one" {
		t.Fatal("a clone shares typed values with the original")
	}
	kw := copyObject(m.SchedulerKwargs)
	kw["schedulers"].([]any)[0].(ClassSpec).Kwargs["lr_lambda"] = nil
	if m.SchedulerKwargs["schedulers"].([]any)[0].(ClassSpec).Kwargs["lr_lambda"] == nil {
		t.Fatal("copyObject shares a spec's kwargs")
	}
}

func TestParseMetadataRefusesBadVersion2Parts(t *testing.T) {
	const base = `{"model_kwargs": {KW}, "scheduler_kwargs": {}, "timestamp": 1, "__pytorch_saver__": {"format_version": 2,
	  "kind": "checkpoint", "model": {"class": "M"},
	  "optimizer": {"class": "O", "param_groups": [], "param_names": [], "state": {}},
	  "scheduler": {"class": "S", "state": {}}, INTERNALS
	  "producer": {"library": "pytorch-saver", "version": "0.2.0", "language": "go"}}, "optim_kwargs": {}}`
	doc := func(kwargs, internals string) string {
		return strings.Replace(strings.Replace(base, "KW", kwargs, 1), "INTERNALS", internals, 1)
	}
	if _, err := ParseMetadata(doc(`"x": 1`, `"extra": {}, "manager": {"id": "a", "step": 0, "metrics": {}},`)); err != nil {
		t.Fatalf("the base document: %v", err)
	}
	extra := func(state string) string {
		return `"extra": {"e": {"class": "C", "state": ` + state + `}},`
	}
	cases := []struct {
		kwargs, internals, kind, needle string
	}{
		{`"x": {"__type__": "set", "items": []}`, "", "TypedValue", `__type__ "set" is not a type`},
		{`"x": {"__type__": 1}`, "", "TypedValue", "__type__ 1 is not a type"},
		{`"x": {"__type__": "tuple"}`, "", "TypedValue", `a "tuple" tag without "items"`},
		{`"x": {"__type__": "dtype", "name": "float32", "extra": 1}`, "", "TypedValue", `with the key "extra"`},
		{`"x": {"__type__": "tuple", "items": {}}`, "", "TypedValue", "model_kwargs.x.items: must be a list"},
		{`"x": {"__type__": "dict", "items": [[1]]}`, "", "TypedValue", "items[0]: must be a two-element list"},
		{`"x": {"__type__": "class", "name": 3}`, "", "TypedValue", "x.name: must be a string"},
		{`"x": {"__type__": "class", "name": "os.system()"}`, "", "TypedValue", "is not a class name"},
		{`"x": {"__type__": "class", "name": "a..b"}`, "", "TypedValue", "is not a class name"},
		{`"x": {"__type__": "class", "name": "` + strings.Repeat("a", 513) + `"}`, "", "TypedValue", "at most 512 bytes"},
		{`"x": {"__type__": "dtype", "name": "float128"}`, "", "TypedValue", `"float128" is not a dtype name`},
		{`"x": {"__type__": "float", "value": "Infinity"}`, "", "TypedValue", `"Infinity" is not "inf"`},
		{`"x": {"__type__": "object", "codec": "", "class": null, "fields": {}}`, "", "TypedValue", "codec: must be a non-empty string"},
		{`"x": {"__type__": "object", "codec": "dataclass", "class": 1, "fields": {}}`, "", "TypedValue", "class: must be a string or null"},
		{`"x": {"__type__": "object", "codec": "dataclass", "class": "C", "fields": []}`, "", "TypedValue", "fields: must be an object"},
		{`"x": {"__type__": "spec", "class": null, "kwargs": {}}`, "", "TypedValue", "class: must be a string"},
		{`"x": {"__type__": "spec", "class": "C", "kwargs": 1}`, "", "TypedValue", "kwargs: must be an object"},
		{`"x": {"__type__": "callable", "name": "f"}`, "", "TypedValue", "a callable tag outside scheduler_kwargs"},
		{`"x": [{"__type__": "tensor", "name": "t"}]`, "", "TypedValue", "model_kwargs.x[0]: a tensor tag outside extra state"},
		{`"x": 1`, extra(`{"a": {"__type__": "tensor", "name": "t"}, "b": {"__type__": "tensor", "name": "t"}}`),
			"TypedValue", `tensor "t" is named by`},
		{`"x": 1`, extra(`{"__type__": "callable", "name": "f"}`), "TypedValue", "outside scheduler_kwargs"},
		{`"x": 1`, `"extra": [],`, "Schema", "__pytorch_saver__.extra: must be an object"},
		{`"x": 1`, `"extra": {"": {"class": "C", "state": {}}},`, "Schema", "an entry with an empty name"},
		{`"x": 1`, `"extra": {"e": {"state": {}}},`, "Schema", "extra.e.class: missing"},
		{`"x": 1`, `"extra": {"e": {"class": "C"}},`, "Schema", "extra.e.state: missing"},
		{`"x": 1`, `"manager": {"step": 0, "metrics": {}},`, "Schema", "manager.id: missing"},
		{`"x": 1`, `"manager": {"id": "a", "step": -1, "metrics": {}},`, "Schema", "manager.step"},
		{`"x": 1`, `"manager": {"id": "a", "step": 0, "metrics": {"loss": "low"}},`, "Schema", "manager.metrics.loss: must be a finite number"},
		{`"x": 1`, `"manager": {"id": "a", "step": 0},`, "Schema", "manager.metrics: missing"},
	}
	for _, c := range cases {
		_, err := ParseMetadata(doc(c.kwargs, c.internals))
		var e *Error
		if !errors.As(err, &e) || e.Kind != c.kind || !strings.Contains(e.Message, c.needle) {
			t.Errorf("%s %s: %v (kind %q); want kind %q containing %q", c.kwargs, c.internals, err, kindOf(err), c.kind, c.needle)
		}
	}
	// A callable in scheduler_kwargs is where it belongs.
	ok := strings.Replace(doc(`"x": 1`, ""), `"scheduler_kwargs": {}`, `"scheduler_kwargs": {"f": {"__type__": "callable", "name": "f"}}`, 1)
	if m, err := ParseMetadata(ok); err != nil || m.SchedulerKwargs["f"] != (CallableRef{Name: "f"}) {
		t.Errorf("a callable in scheduler_kwargs: %v, %v", m, err)
	}
}

// The flat metadata of a load has no internals; it is the library's
// form (version 2), whose tags are decoded.
func TestMetadataFromMapDecodesTags(t *testing.T) {
	m, err := MetadataFromMap(map[string]any{
		"model_kwargs": map[string]any{"dtype": map[string]any{"__type__": "dtype", "name": "float64"}},
		"timestamp":    1.0,
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.ModelKwargs["dtype"] != (TorchDtype{Name: "float64"}) {
		t.Errorf("flat model_kwargs %#v", m.ModelKwargs)
	}
}
