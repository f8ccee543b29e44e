//go:build pytorchsaver_gcstress

package pytorchsaver

// gcStress is set by the pytorchsaver_gcstress build tag (see maybeGC).
const gcStress = true
