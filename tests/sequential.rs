//! The portable Sequential (docs/MODELS.md): PyTorch's state-dict names
//! and parameter order for every layer type, PyTorch's forward in eval and
//! train mode (checked against the Python package, which builds the same
//! JSON as a real `torch.nn.Sequential`), and refusal of bad layer lists
//! naming the layer.

mod common;

use pytorch_saver::models::{Sequential, LAYER_TYPES, SEQUENTIAL};
use pytorch_saver::{ContainerSpec, Error, ModelContainer};
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

fn kw(layers: Value) -> Map<String, Value> {
    json!({ "layers": layers }).as_object().unwrap().clone()
}

fn build(layers: Value) -> pytorch_saver::Result<ModelContainer> {
    let mut c = ModelContainer::new();
    c.initialize(ContainerSpec::model(SEQUENTIAL, kw(layers)))?;
    Ok(c)
}

/// One layer of every type, with the state docs/MODELS.md gives each.
fn every_layer() -> Value {
    json!([
        {"type": "Conv2d", "in_channels": 2, "out_channels": 4, "kernel_size": [3, 2], "groups": 2},
        {"type": "BatchNorm2d", "num_features": 4},
        {"type": "ReLU"},
        {"type": "MaxPool2d", "kernel_size": 2},
        {"type": "AvgPool2d", "kernel_size": 1},
        {"type": "Flatten"},
        {"type": "Linear", "in_features": 12, "out_features": 6, "bias": false},
        {"type": "LayerNorm", "normalized_shape": [6]},
        {"type": "Dropout", "p": 0.1},
        {"type": "GELU", "approximate": "tanh"},
        {"type": "Tanh"},
        {"type": "Sigmoid"},
        {"type": "SiLU"},
        {"type": "LeakyReLU", "negative_slope": 0.2},
        {"type": "Identity"},
        {"type": "Softmax", "dim": 1},
        {"type": "Embedding", "num_embeddings": 5, "embedding_dim": 3, "padding_idx": -1},
        {"type": "Conv1d", "in_channels": 3, "out_channels": 2, "kernel_size": 3, "bias": false},
        {"type": "BatchNorm1d", "num_features": 2, "affine": false, "momentum": null}
    ])
}

#[test]
fn every_layer_type_has_pytorchs_state_names_shapes_and_dtypes() {
    let c = build(every_layer()).unwrap();
    let model = c.model().unwrap();
    let state: Vec<(String, Vec<i64>, Kind)> = model
        .state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.size(), t.kind()))
        .collect();
    let f = Kind::Float;
    let want: Vec<(String, Vec<i64>, Kind)> = [
        ("0.bias", vec![4], f),
        ("0.weight", vec![4, 1, 3, 2], f),
        ("1.bias", vec![4], f),
        ("1.num_batches_tracked", vec![], Kind::Int64),
        ("1.running_mean", vec![4], f),
        ("1.running_var", vec![4], f),
        ("1.weight", vec![4], f),
        ("16.weight", vec![5, 3], f),
        ("17.weight", vec![2, 3, 3], f),
        ("18.num_batches_tracked", vec![], Kind::Int64),
        ("18.running_mean", vec![2], f),
        ("18.running_var", vec![2], f),
        ("6.weight", vec![6, 12], f),
        ("7.bias", vec![6], f),
        ("7.weight", vec![6], f),
    ]
    .into_iter()
    .map(|(n, s, k)| (n.to_owned(), s, k))
    .collect();
    assert_eq!(state, want);

    // The optimizer's parameter order: layer order, weight before bias;
    // buffers are not parameters.
    let params: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        params,
        [
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "6.weight",
            "7.weight",
            "7.bias",
            "16.weight",
            "17.weight"
        ]
    );
    let seq = model.module::<Sequential>().expect("a Sequential");
    assert_eq!(seq.len(), 19);
    let types: Vec<&str> = seq.layer_types().collect();
    assert_eq!(types[..3], ["Conv2d", "BatchNorm2d", "ReLU"]);
    let mut all: Vec<&str> = types.clone();
    all.sort();
    let mut known = LAYER_TYPES.to_vec();
    known.sort();
    assert_eq!(all, known, "the test covers every layer type");
}

#[test]
fn a_new_sequential_starts_from_pytorchs_default_init() {
    tch::manual_seed(3);
    let c = build(json!([
        {"type": "Conv2d", "in_channels": 4, "out_channels": 8, "kernel_size": 3, "groups": 2},
        {"type": "BatchNorm2d", "num_features": 8},
        {"type": "Embedding", "num_embeddings": 400, "embedding_dim": 50, "padding_idx": 7},
        {"type": "LayerNorm", "normalized_shape": 5}
    ]))
    .unwrap();
    let state = c.model().unwrap().state_dict();
    // fan_in = in_channels / groups * 3 * 3 = 18.
    let bound = 1.0 / 18f64.sqrt();
    for name in ["0.weight", "0.bias"] {
        let t = &state[name];
        assert!(t.abs().max().double_value(&[]) <= bound, "{name}");
        assert!(
            t.abs().max().double_value(&[]) > bound * 0.5,
            "{name} is spread over the range"
        );
    }
    let ones = |n| Tensor::ones([n], (Kind::Float, tch::Device::Cpu));
    assert!(state["1.weight"].equal(&ones(8)));
    assert!(state["1.bias"].equal(&ones(8).zeros_like()));
    assert!(state["1.running_mean"].equal(&ones(8).zeros_like()));
    assert!(state["1.running_var"].equal(&ones(8)));
    assert_eq!(state["1.num_batches_tracked"].int64_value(&[]), 0);
    let emb = &state["2.weight"];
    let std = emb.std(true).double_value(&[]);
    assert!((std - 1.0).abs() < 0.05, "normal(0, 1): std {std}");
    assert_eq!(
        emb.get(7).abs().sum(Kind::Float).double_value(&[]),
        0.0,
        "padding row is zero"
    );
    assert!(state["3.weight"].equal(&ones(5)));
}

/// (layer list, what the error must say). Each error names the layer's
/// index and type, as docs/MODELS.md requires.
fn bad_layer_lists() -> Vec<(Value, &'static str)> {
    let linear = json!({"type": "Linear", "in_features": 2, "out_features": 2});
    vec![
        (json!([]), "kwarg \"layers\" must be a non-empty array of layer objects, got []"),
        (json!({"type": "ReLU"}), "kwarg \"layers\" must be a non-empty array"),
        (json!([linear, 3]), "layer 1: must be an object with a string \"type\", got 3"),
        (json!([{"in_features": 2}]), "layer 0: has no \"type\""),
        (
            json!([linear, {"type": "Conv3d"}]),
            "layer 1 (Conv3d): unknown type \"Conv3d\"; the known types are Linear, Conv1d",
        ),
        (
            json!([{"type": "Linear", "in_features": 2}]),
            "layer 0 (Linear): argument \"out_features\" is required",
        ),
        (
            json!([{"type": "Linear", "in_features": 2, "out_features": 2, "bais": true}]),
            "layer 0 (Linear): unexpected argument \"bais\" (Linear takes in_features, out_features, bias)",
        ),
        (
            json!([{"type": "Linear", "in_features": 2.0, "out_features": 2}]),
            "layer 0 (Linear): argument \"in_features\" must be an int, got 2.0",
        ),
        (
            json!([{"type": "Linear", "in_features": true, "out_features": 2}]),
            "argument \"in_features\" must be an int, got true",
        ),
        (
            json!([{"type": "Linear", "in_features": 0, "out_features": 2}]),
            "argument \"in_features\" must be >= 1, got 0",
        ),
        (
            json!([{"type": "Linear", "in_features": 2, "out_features": 2, "bias": null}]),
            "argument \"bias\" must be a bool (true or false), got null",
        ),
        (
            json!([linear, linear, {"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": "3"}]),
            "layer 2 (Conv2d): argument \"kernel_size\" must be an int or 2 ints, got \"3\"",
        ),
        (
            json!([{"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": [3, 3, 3]}]),
            "must be an int or 2 ints, got [3, 3, 3]",
        ),
        (
            json!([{"type": "Conv1d", "in_channels": 3, "out_channels": 2, "kernel_size": 3, "groups": 2}]),
            "layer 0 (Conv1d): argument \"in_channels\" must be divisible by groups (2), got 3",
        ),
        (
            json!([{"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": "full"}]),
            "argument \"padding\" must be an int or 2 ints or \"valid\" or \"same\", got \"full\"",
        ),
        (
            json!([{"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": "same", "stride": 2}]),
            "argument \"padding\" \"same\" needs stride 1 (PyTorch does not support it for strided convolutions), got stride 2",
        ),
        (
            json!([{"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": -1}]),
            "argument \"padding\" must be >= 0, got -1",
        ),
        (
            json!([{"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding_mode": "reflect"}]),
            "argument \"padding_mode\" must be \"zeros\", got \"reflect\"",
        ),
        (
            json!([{"type": "Embedding", "num_embeddings": 4, "embedding_dim": 2, "padding_idx": 4}]),
            "argument \"padding_idx\" must be in [-4, 4), got 4",
        ),
        (
            json!([{"type": "Embedding", "num_embeddings": 4, "embedding_dim": 2, "max_norm": 1.0}]),
            "unexpected argument \"max_norm\"",
        ),
        (
            json!([{"type": "LayerNorm", "normalized_shape": []}]),
            "layer 0 (LayerNorm): argument \"normalized_shape\" must be an int or a non-empty array of ints, got []",
        ),
        (
            json!([{"type": "LayerNorm", "normalized_shape": 4, "eps": 0}]),
            "argument \"eps\" must be > 0, got 0",
        ),
        (
            json!([{"type": "BatchNorm2d", "num_features": 4, "momentum": 1.5}]),
            "layer 0 (BatchNorm2d): argument \"momentum\" must be in [0, 1], got 1.5",
        ),
        (
            json!([{"type": "Dropout", "p": 1.2}]),
            "layer 0 (Dropout): argument \"p\" must be in [0, 1], got 1.2",
        ),
        (
            json!([{"type": "Tanh", "inplace": false}]),
            "unexpected argument \"inplace\" (Tanh takes no arguments)",
        ),
        (
            json!([{"type": "GELU", "approximate": "erf"}]),
            "argument \"approximate\" must be \"none\" or \"tanh\", got \"erf\"",
        ),
        (
            json!([{"type": "Softmax"}]),
            "layer 0 (Softmax): argument \"dim\" is required (PyTorch's implicit dim is deprecated and not portable)",
        ),
        (
            json!([{"type": "MaxPool2d", "kernel_size": 2, "return_indices": true}]),
            "argument \"return_indices\" must be false, got true",
        ),
        (
            json!([{"type": "AvgPool2d", "kernel_size": 2, "divisor_override": 0}]),
            "argument \"divisor_override\" must be >= 1, got 0",
        ),
        (
            json!([{"type": "AvgPool2d"}]),
            "layer 0 (AvgPool2d): argument \"kernel_size\" is required",
        ),
        (json!([{"type": 3}]), "layer 0: \"type\" must be a string, got 3"),
        (json!([{"type": "Linear", "in_features": 9_223_372_036_854_775_808u64, "out_features": 2}]), "argument \"in_features\" must be an int, got 9223372036854775808"),
        (json!([{"type": "Conv2d", "in_channels": 2, "out_channels": 3, "kernel_size": 1, "groups": 2}]), "argument \"out_channels\" must be divisible by groups (2), got 3"),
        (json!([{"type": "MaxPool2d", "kernel_size": 2, "return_indices": null}]), "argument \"return_indices\" must be false, got null"),
        (json!([{"type": "Dropout", "p": "0.5"}]), "argument \"p\" must be a number, got \"0.5\""),
        (json!([{"type": "GELU", "approximate": null}]), "argument \"approximate\" must be \"none\" or \"tanh\", got null"),
        (json!([{"type": "Conv1d", "in_channels": 1, "out_channels": 1, "kernel_size": [2, 2]}]), "layer 0 (Conv1d): argument \"kernel_size\" must be an int or 1 int, got [2, 2]"),
        (json!([{"type": "Linear", "in_features": 2, "out_features": 2}, {"type": "Embedding", "num_embeddings": 3, "embedding_dim": 2, "padding_idx": -4}]), "layer 1 (Embedding): argument \"padding_idx\" must be in [-3, 3), got -4"),
    ]
}

#[test]
fn bad_layer_lists_are_refused_naming_the_layer() {
    for (layers, want) in bad_layer_lists() {
        match build(layers.clone()) {
            Err(Error::InvalidKwargs { class, reason }) => {
                assert_eq!(class, SEQUENTIAL);
                assert!(reason.contains(want), "{layers}: {reason:?} lacks {want:?}");
            }
            Err(other) => panic!("{layers}: expected InvalidKwargs, got {other:?}"),
            Ok(_) => panic!("{layers}: accepted"),
        }
    }
    // Any kwarg besides "layers" is refused, as a Python TypeError would be.
    let mut c = ModelContainer::new();
    let mut extra = kw(json!([{"type": "ReLU"}]));
    extra.insert("depth".into(), json!(3));
    let err = c.initialize(ContainerSpec::model(SEQUENTIAL, extra)).unwrap_err();
    assert!(err.to_string().contains("unexpected kwarg \"depth\""), "{err}");
    let missing = c.initialize(ContainerSpec::model(SEQUENTIAL, Map::new())).unwrap_err();
    assert!(
        missing.to_string().contains("kwarg \"layers\" is required"),
        "{missing}"
    );
}

/// The two implementations refuse the same layer lists with the same
/// message.
#[test]
fn python_refuses_the_same_layer_lists_with_the_same_messages() {
    let cases = bad_layer_lists();
    let lists: Vec<Value> = cases.iter().map(|(layers, _)| layers.clone()).collect();
    let python = common::run_python("sequential_reference.py", &json!({ "refusals": lists }));
    for ((layers, _), python) in cases.iter().zip(python.as_array().unwrap()) {
        let python = python.as_str().unwrap_or_else(|| panic!("Python accepts {layers}"));
        let rust = match build(layers.clone()) {
            Err(Error::InvalidKwargs { reason, .. }) => reason,
            other => panic!("{layers}: {:?}", other.err()),
        };
        let python = python.strip_prefix("Sequential: ").unwrap_or(python);
        assert_eq!(rust, python, "{layers}");
    }
}

#[test]
fn null_means_none_only_where_pytorchs_default_is_none() {
    build(json!([
        {"type": "MaxPool2d", "kernel_size": 2, "stride": null},
        {"type": "AvgPool2d", "kernel_size": 1, "divisor_override": null},
        {"type": "Embedding", "num_embeddings": 3, "embedding_dim": 2, "padding_idx": null},
        {"type": "BatchNorm1d", "num_features": 2, "momentum": null}
    ]))
    .unwrap();
}

#[test]
fn forward_errors_name_the_layer_and_leave_the_model_usable() {
    let c = build(json!([
        {"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3},
        {"type": "BatchNorm2d", "num_features": 2},
        {"type": "Flatten"},
        {"type": "Linear", "in_features": 8, "out_features": 1}
    ]))
    .unwrap();
    let model = c.model().unwrap();
    let wrong_rank = Tensor::zeros([2, 4, 4], (Kind::Float, tch::Device::Cpu));
    match model.forward(&wrong_rank) {
        Err(Error::Torch(m)) => assert!(m.starts_with("layer 0 (Conv2d): "), "{m}"),
        other => panic!("expected a Torch error, got {other:?}"),
    }
    let wrong_width = Tensor::zeros([2, 1, 5, 5], (Kind::Float, tch::Device::Cpu));
    match model.forward(&wrong_width) {
        Err(Error::Torch(m)) => assert!(
            m.starts_with("layer 3 (Linear): ") && m.contains("shapes cannot be multiplied"),
            "{m}"
        ),
        other => panic!("expected a Torch error, got {other:?}"),
    }
    let one = Tensor::zeros([1, 1, 3, 3], (Kind::Float, tch::Device::Cpu));
    match model.forward_t(&one, true) {
        Err(Error::Torch(m)) => assert!(
            m.contains("layer 1 (BatchNorm2d): expected more than 1 value per channel"),
            "{m}"
        ),
        other => panic!("expected a Torch error, got {other:?}"),
    }
    let bn = build(json!([{"type": "BatchNorm1d", "num_features": 2}])).unwrap();
    let rank4 = Tensor::zeros([2, 2, 1, 1], (Kind::Float, tch::Device::Cpu));
    let err = bn.model().unwrap().forward(&rank4).unwrap_err();
    assert!(
        err.to_string().contains("expected 2D or 3D input (got 4D input)"),
        "{err}"
    );
    // Refused before it ran: the running statistics did not move.
    assert_eq!(
        c.model().unwrap().state_dict()["1.num_batches_tracked"].int64_value(&[]),
        0
    );
    let ok = Tensor::ones([2, 1, 4, 4], (Kind::Float, tch::Device::Cpu));
    assert_eq!(model.forward(&ok).unwrap().size(), [2, 1]);
}

/// The nets of the cross-language check, with inputs: together they use
/// every layer type; `train_forward` where the train-mode output is
/// deterministic (no Dropout).
fn reference_nets() -> Vec<(&'static str, Value, Tensor, Vec<i64>, bool)> {
    tch::manual_seed(5);
    let opts = (Kind::Float, tch::Device::Cpu);
    vec![
        (
            "convnet",
            json!([
                {"type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1},
                {"type": "BatchNorm2d", "num_features": 4},
                {"type": "ReLU"},
                {"type": "MaxPool2d", "kernel_size": 2},
                {"type": "Conv2d", "in_channels": 4, "out_channels": 4, "kernel_size": [3, 1], "padding": "same", "groups": 2, "dilation": [1, 2]},
                {"type": "AvgPool2d", "kernel_size": 2, "stride": 1, "padding": 1, "count_include_pad": false},
                {"type": "Flatten"},
                {"type": "Linear", "in_features": 64, "out_features": 8},
                {"type": "GELU", "approximate": "tanh"},
                {"type": "Linear", "in_features": 8, "out_features": 3}
            ]),
            Tensor::randn([6, 1, 6, 6], opts),
            vec![6, 3],
            true,
        ),
        (
            "dropout",
            json!([
                {"type": "Flatten"},
                {"type": "Linear", "in_features": 12, "out_features": 10},
                {"type": "Dropout", "p": 0.25},
                {"type": "GELU"},
                {"type": "Linear", "in_features": 10, "out_features": 3},
                {"type": "Softmax", "dim": -1}
            ]),
            Tensor::randn([5, 3, 4], opts),
            vec![5, 3],
            false,
        ),
        (
            "sequence",
            json!([
                {"type": "Conv1d", "in_channels": 3, "out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1},
                {"type": "BatchNorm1d", "num_features": 6, "momentum": null},
                {"type": "LeakyReLU", "negative_slope": 0.2},
                {"type": "Conv1d", "in_channels": 6, "out_channels": 6, "kernel_size": 4, "padding": "same", "bias": false},
                {"type": "Flatten"},
                {"type": "LayerNorm", "normalized_shape": 30, "eps": 1e-3},
                {"type": "SiLU"},
                {"type": "Linear", "in_features": 30, "out_features": 4},
                {"type": "BatchNorm1d", "num_features": 4, "affine": false, "track_running_stats": false},
                {"type": "Tanh"},
                {"type": "Identity"},
                {"type": "Linear", "in_features": 4, "out_features": 2},
                {"type": "Sigmoid"}
            ]),
            Tensor::randn([7, 3, 10], opts),
            vec![7, 2],
            true,
        ),
        (
            "embedding",
            json!([
                {"type": "Embedding", "num_embeddings": 10, "embedding_dim": 6, "padding_idx": 0},
                {"type": "LayerNorm", "normalized_shape": [5, 6], "elementwise_affine": false},
                {"type": "Flatten"},
                {"type": "Linear", "in_features": 30, "out_features": 2},
                {"type": "ReLU"}
            ]),
            Tensor::randint(10, [4, 5], (Kind::Int64, tch::Device::Cpu)),
            vec![4, 2],
            true,
        ),
    ]
}

/// The bar: a Sequential trained in Python loads in Rust with no
/// model code and gives PyTorch's outputs within 1e-6, in eval mode and
/// (BatchNorm statistics included) in train mode.
#[test]
fn python_trained_sequentials_give_pytorchs_outputs_in_rust() {
    let dir = tempfile::tempdir().unwrap();
    let nets = reference_nets();
    let mut data: Vec<(String, Tensor)> = Vec::new();
    let mut spec = Map::new();
    for (name, layers, x, y_shape, train_forward) in &nets {
        data.push((format!("{name}.x"), x.shallow_clone()));
        data.push((
            format!("{name}.y"),
            Tensor::randn(y_shape.as_slice(), (Kind::Float, tch::Device::Cpu)),
        ));
        spec.insert(
            name.to_string(),
            json!({"layers": layers, "train_forward": train_forward}),
        );
    }
    let data_file = dir.path().join("data.safetensors");
    Tensor::write_safetensors(&data, &data_file).unwrap();
    let written = common::run_python(
        "sequential_reference.py",
        &json!({"nets": spec, "data": data_file, "out": dir.path()}),
    );

    for (name, _, x, _, train_forward) in &nets {
        let mut c = ModelContainer::new();
        c.load(written[name].as_str().unwrap()).unwrap();
        let want = common::read_safetensors(&dir.path().join(format!("{name}.expected.safetensors")));
        let model = c.model().unwrap();
        let eval = model.forward(x).unwrap();
        let d = common::max_rel_diff(&eval, &want["eval"]);
        assert!(d <= 1e-6, "{name}: eval output differs by {d:e}");
        if !train_forward {
            continue;
        }
        let train = tch::no_grad(|| model.forward_t(x, true)).unwrap();
        let d = common::max_rel_diff(&train, &want["train"]);
        assert!(d <= 1e-6, "{name}: train output differs by {d:e}");
        for (key, t) in model.state_dict() {
            let expected = &want[&format!("state.{key}")];
            assert_eq!(t.kind(), expected.kind(), "{name}: {key}");
            let d = common::max_rel_diff(&t, expected);
            assert!(d <= 1e-6, "{name}: {key} after a train-mode forward differs by {d:e}");
        }
    }
}
