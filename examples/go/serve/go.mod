module github.com/pytorch-saver/pytorch-saver/examples/go/serve

go 1.24

require github.com/pytorch-saver/pytorch-saver/bindings/go v0.0.0

replace github.com/pytorch-saver/pytorch-saver/bindings/go => ../../../bindings/go
