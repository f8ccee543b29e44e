module github.com/pytorch-saver/pytorch-saver/bindings/go

go 1.24
