package pytorchsaver

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The shared corpus of malformed sharded checkpoints, which every
// language runs: each case of tests/corpus/sharded is a directory, which
// OpenSharded, or else Verify, must refuse with the error kind and
// message its manifest names.

// shardedCorpusRoot is tests/corpus/sharded of the repository, from
// bindings/go.
var shardedCorpusRoot = filepath.Join(corpusRoot, "sharded")

// shardedRefusals are the codes of a reader's refusal of a sharded
// checkpoint: the file kinds, and TensorNotFound (a chunk's tensor
// missing from its shard).
var shardedRefusals = []Code{CodeFormat, CodeUnsupportedVersion, CodeIO, CodeNotFound}

// shardedCorpusCases lists the case directories of the sharded corpus,
// and any other entry but the manifest and what describes the corpus
// (README), so that a stray file is reported.
func shardedCorpusCases(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(shardedCorpusRoot)
	if err != nil {
		t.Fatal(err)
	}
	var cases []string
	for _, e := range entries {
		if name := e.Name(); name != "manifest.json" && !strings.HasPrefix(name, "README") {
			cases = append(cases, name)
		}
	}
	return cases
}

// openAndVerifySharded opens the sharded checkpoint at location and
// verifies it, returning the first refusal and the step that made it.
func openAndVerifySharded(location string) (string, error) {
	s, err := OpenSharded(location)
	if err != nil {
		return "OpenSharded", err
	}
	defer s.Close()
	return "Verify", s.Verify()
}

// Every malformed sharded checkpoint of the shared corpus is refused by
// OpenSharded or Verify with the kind and message its manifest records.
func TestShardedCorpusCasesAreRefusedWithTheirKind(t *testing.T) {
	cases := readCorpusManifest(t, shardedCorpusRoot)
	var listed []string
	for _, c := range cases {
		listed = append(listed, c.File)
	}
	slices.Sort(listed)
	if entries := shardedCorpusCases(t); !slices.Equal(entries, listed) {
		t.Errorf("the directory holds %v\nthe manifest lists %v", entries, listed)
	}
	for _, c := range cases {
		t.Run(c.File, func(t *testing.T) {
			step, err := openAndVerifySharded(filepath.Join(shardedCorpusRoot, c.File))
			if err == nil {
				t.Fatalf("opened and verified; want %s containing %q (%s)", c.Kind, c.Message, c.What)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("%s: %T %v is not an *Error", step, err, err)
			}
			if e.Kind != c.Kind {
				t.Errorf("%s: kind %q (%v), want %q (%s)", step, e.Kind, err, c.Kind, c.What)
			}
			if !strings.Contains(e.Message, c.Message) {
				t.Errorf("%s: message %q does not contain %q", step, e.Message, c.Message)
			}
			if !slices.Contains(shardedRefusals, e.Code) {
				t.Errorf("%s: code %d (%v) is not a reader's refusal", step, e.Code, e.Code)
			}
		})
	}
}
