// Command serve is a small HTTP inference server over a pytorch-saver
// checkpoint, standard library only: it loads the model a checkpoint file
// names (any built-in class: torch.nn.Linear, pytorch_saver.models.MLP,
// pytorch_saver.models.Sequential) at start-up and answers predictions.
//
// Usage:
//
//	go run . -checkpoint model_inference_1795886184.zip [-addr 127.0.0.1:8080] [-input-shape 1,8,8] [-copy] [-skip-verify]
//
// It prints "listening on http://ADDR" once it accepts connections, and
// shuts down gracefully (finishing requests in flight) on SIGINT or
// SIGTERM. With -predict '<request JSON>' it answers one request on
// stdout and exits instead (status 1 on a refused request).
//
// Endpoints:
//
//	POST /predict  {"inputs": [[...], ...]}               a batch of examples, each
//	                                                       flat or nested as the input shape
//	               {"input": [...], "shape": [B, ...]}     one flat batch and its shape
//	            -> {"outputs": [[...], ...], "predictions": [argmax, ...], "output_shape": [B, ...]}
//	GET /healthz   {"status": "ok"}
//	GET /info      the model's class and kwargs, the file's kind, timestamp
//	               and producer, the per-example input shape, and whether
//	               requests run the model concurrently
//
// The model is a pytorchsaver.Model: requests run it concurrently, with
// no lock around forward. By default its tensors point into a private
// mapping of the file and every CRC-32 is checked at start-up; -copy
// copies the tensors instead (for a file that another process may
// truncate or rewrite while it is served: a mapping would fault), and
// -skip-verify skips the CRC check of a file verified when it was
// deployed (`pytorch-saver verify`).
//
// The per-example input shape comes from -input-shape, or from the
// model's kwargs (a Linear's in_features, an MLP's in_dim). Errors are
// answered as {"error": "..."}: 400 for a body that is not a valid
// request or does not fit the input shape, 405 for a wrong method, 413
// for a body over -max-body bytes, 404 for an unknown path.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	pytorchsaver "github.com/pytorch-saver/pytorch-saver/bindings/go"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is the program: it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("serve", flag.ContinueOnError)
	flags.SetOutput(stderr)
	checkpoint := flags.String("checkpoint", "", "the checkpoint file to serve (required)")
	addr := flags.String("addr", "127.0.0.1:8080", "the address to listen on (port 0: any free port)")
	inputShape := flags.String("input-shape", "", "one example's input shape, such as 4 or 1,8,8 (default: from the model's kwargs)")
	maxBody := flags.Int64("max-body", 1<<20, "the largest request body accepted, in bytes")
	predict := flags.String("predict", "", "answer this request body (JSON) on stdout and exit, without serving")
	copyTensors := flags.Bool("copy", false, "copy the tensors into memory instead of mapping the file (for a file that may be rewritten while served)")
	skipVerify := flags.Bool("skip-verify", false, "skip the CRC-32 check of the tensor data (for a file verified when it was deployed)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *checkpoint == "" || flags.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: serve -checkpoint FILE [-addr HOST:PORT] [-input-shape D,...] [-predict JSON]")
		return 2
	}
	logger := log.New(stderr, "serve: ", log.LstdFlags)
	opts := options{maxBody: *maxBody, load: pytorchsaver.LoadOptions{Copy: *copyTensors, SkipVerify: *skipVerify}}
	if *inputShape != "" {
		shape, err := parseShape(*inputShape)
		if err != nil {
			logger.Print(err)
			return 2
		}
		opts.inputShape = shape
	}
	s, err := newServer(*checkpoint, opts)
	if err != nil {
		logger.Print(err)
		return 1
	}
	defer s.Close()

	if *predict != "" {
		resp, err := s.predict(strings.NewReader(*predict))
		if err != nil {
			writeJSONTo(stdout, map[string]string{"error": err.Error()})
			return 1
		}
		writeJSONTo(stdout, resp)
		return 0
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		logger.Print(err)
		return 1
	}
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          logger,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	logger.Printf("serving %s from %s (input shape %v, concurrent forward: %v)", s.info.ModelClass, *checkpoint, s.inputShape, s.info.Concurrent)
	fmt.Fprintf(stdout, "listening on http://%s\n", ln.Addr())

	select {
	case err := <-done:
		logger.Print(err)
		return 1
	case <-ctx.Done():
	}
	logger.Print("shutting down")
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		logger.Printf("shutdown: %v", err)
		return 1
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		logger.Print(err)
		return 1
	}
	return 0
}

func writeJSONTo(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(w, "{\"error\": %q}\n", err.Error())
	}
}
