package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Bounds on a client run. A runtime may be slow to start on a loaded
// machine (the Java launcher compiles the program first); startTimeout
// bounds that. The request itself is bounded by clientTimeout from the
// moment the client says it sends it (or, for curl, from the start): a
// client that gets no answer by then hangs, and fails its case instead of
// holding up the suite.
const (
	startTimeout  = 90 * time.Second
	clientTimeout = 20 * time.Second
)

// sendingLine is the line a script prints right before its request.
const sendingLine = "sending\n"

// askTimeout bounds asking a runtime what it can do.
const askTimeout = 20 * time.Second

// The cases, each a request that the client library frames itself; the
// names are the scripts' CASE argument.
const (
	framingNone          = "get"            // GET, no body
	framingContentLength = "content-length" // POST, Content-Length
	framingChunked       = "chunked"        // POST, Transfer-Encoding: chunked
	framingExpect        = "expect"         // POST, Content-Length and Expect: 100-continue
)

// interopRequest is one request for a client to make.
type interopRequest struct {
	framing  string
	url      string
	bodyFile string // the body, for the POST cases
}

// clientResult is what a client reported, decoded from the JSON line the
// scripts print.
type clientResult struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
	// Continues is the number of 100 Continue responses the client library
	// reported; nil where the library does not expose them.
	Continues *int `json:"continues"`
	// Unsupported says why the client library refused the request.
	Unsupported string `json:"unsupported"`

	err error // the client failed, or was killed at a bound of runClient
}

// interopClient is one client stack.
type interopClient struct {
	name string
	// find returns the command that makes one request (the request's
	// arguments are appended), or an error naming what is missing.
	find func(ctx context.Context) ([]string, error)
	// run makes one request; nil runs the command as a script of
	// testdata/interop that prints a clientResult.
	run func(ctx context.Context, command []string, req interopRequest) clientResult
}

var interopClients = []interopClient{
	{name: "curl", find: findCurl, run: runCurl},
	{name: "python-requests", find: findPython},
	{name: "node-fetch", find: findNode("fetch")},
	{name: "node-http", find: findNode("http")},
	{name: "java-httpclient", find: findJava},
	// A reference client that frames each request by hand and counts
	// interim responses itself.
	{name: "go-raw", find: func(context.Context) ([]string, error) { return nil, nil }, run: runRaw},
}

// script is the absolute path of a client script in testdata/interop.
func script(name string) string {
	path, err := filepath.Abs(filepath.Join("testdata", "interop", name))
	if err != nil {
		panic(err) // only when the working directory is gone
	}
	return path
}

func findCurl(context.Context) ([]string, error) {
	bin, err := exec.LookPath("curl")
	if err != nil {
		return nil, err
	}
	return []string{bin}, nil
}

// findPython returns a python3 that can import requests: the one on PATH
// (which may be a version manager's, without it) or Debian's. It runs the
// interpreter itself, not a version manager's shim, which costs a second
// or two a start.
func findPython(ctx context.Context) ([]string, error) {
	var tried []string
	for _, name := range []string{"python3", "/usr/bin/python3"} {
		bin, err := exec.LookPath(name)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		exe, err := askRuntime(ctx, bin, "-c", "import sys, requests; print(sys.executable)")
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", bin, err))
			continue
		}
		return []string{exe, script("client.py")}, nil
	}
	return nil, fmt.Errorf("no python3 with the requests module (%s)", strings.Join(tried, "; "))
}

// findNode returns node running client.mjs with api (fetch or http). Node
// 18 is the first with a global fetch that takes a stream body.
func findNode(api string) func(context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		bin, err := exec.LookPath("node")
		if err != nil {
			return nil, err
		}
		const check = "process.exit(typeof fetch === 'function' && typeof ReadableStream === 'function' ? 0 : 1)"
		if _, err := askRuntime(ctx, bin, "-e", check); err != nil {
			version, _ := askRuntime(ctx, bin, "--version")
			return nil, fmt.Errorf("node %s has no fetch with stream bodies (Node 18 or later): %v", version, err)
		}
		return []string{bin, script("client.mjs"), api}, nil
	}
}

// findJava returns java running Interop.java from source, which takes a
// JDK: the launcher compiles it with jdk.compiler.
func findJava(ctx context.Context) ([]string, error) {
	bin, err := exec.LookPath("java")
	if err != nil {
		return nil, err
	}
	modules, err := askRuntime(ctx, bin, "--list-modules")
	if err != nil {
		return nil, err
	}
	for _, m := range []string{"java.net.http", "jdk.compiler"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(m) + `@`).MatchString(modules) {
			return nil, fmt.Errorf("%s has no module %s: a JDK is needed to run a source program", bin, m)
		}
	}
	// C1 only and the serial collector: start-up flags, nothing that
	// HttpClient sees; the launcher's compile then takes 4s here, not 7s.
	return []string{bin, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", script("Interop.java")}, nil
}

// askRuntime runs a runtime's self-check and returns its standard output;
// a failure carries the last line of its standard error (a traceback's
// ends with the exception).
func askRuntime(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		return "", fmt.Errorf("%v: %s", err, lines[len(lines)-1])
	}
	return strings.TrimSpace(string(out)), nil
}

// runClient runs a client command, bounded by startTimeout and
// clientTimeout (from its sendingLine if announces, else from the start),
// with no proxy settings from the environment: every request goes to the
// loopback tap.
func runClient(ctx context.Context, announces bool, args ...string) (stdout, stderr []byte, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasSuffix(strings.ToLower(name), "_proxy") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "NO_PROXY=127.0.0.1", "no_proxy=127.0.0.1")
	cmd.WaitDelay = time.Second
	out := &announcedWriter{sent: make(chan struct{})}
	var errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = out, &errOut
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	phase, bound, sending := "start and send its request", startTimeout, out.sent
	if !announces {
		phase, bound, sending = "answer", clientTimeout, nil
	}
	timer := time.NewTimer(bound)
	defer timer.Stop()
	for {
		select {
		case err := <-exited:
			if err != nil {
				return out.buf.Bytes(), errOut.Bytes(), failed(err, out, &errOut)
			}
			return out.buf.Bytes(), errOut.Bytes(), nil
		case <-sending:
			phase, bound, sending = "answer", clientTimeout, nil
			timer.Reset(bound)
		case <-timer.C:
			cancel()
			<-exited
			err := fmt.Errorf("did not %s within %s: killed", phase, bound)
			return out.buf.Bytes(), errOut.Bytes(), failed(err, out, &errOut)
		}
	}
}

func failed(err error, stdout *announcedWriter, stderr *bytes.Buffer) error {
	return fmt.Errorf("%v; its output:\n%s%s", err, truncate(stdout.buf.String(), 500), tailString(stderr.String(), 2000))
}

// announcedWriter keeps a client's standard output and closes sent when
// the sendingLine appears. exec.Cmd calls Write from one goroutine, and the
// buffer is read only after Wait.
type announcedWriter struct {
	buf  bytes.Buffer
	sent chan struct{}
	seen bool
}

func (w *announcedWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if !w.seen && bytes.Contains(w.buf.Bytes(), []byte(sendingLine)) {
		w.seen = true
		close(w.sent)
	}
	return len(p), nil
}

func tailString(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// runScript runs one of the scripts, which prints a clientResult as its
// last line.
func runScript(ctx context.Context, command []string, req interopRequest) clientResult {
	args := append(append([]string{}, command...), req.framing, req.url, req.bodyFile)
	stdout, _, err := runClient(ctx, true, args...)
	if err != nil {
		return clientResult{err: err}
	}
	lines := strings.Split(strings.TrimSpace(string(stdout)), "\n")
	var res clientResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		return clientResult{err: fmt.Errorf("decoding the client's result %q: %v", truncate(string(stdout), 500), err)}
	}
	return res
}

// curlContinue matches the status line of a 100 Continue in curl -v output.
var curlContinue = regexp.MustCompile(`(?m)^< HTTP/1\.[01] 100 `)

// runCurl runs curl with the options each case needs. curl sends
// "Expect: 100-continue" by itself for bodies over 1 MiB: the content-length
// and chunked cases turn it off with an empty Expect header.
func runCurl(ctx context.Context, command []string, req interopRequest) clientResult {
	out := req.bodyFile + ".curl-answer"
	defer os.Remove(out)
	args := append(append([]string{}, command...), "-sS", "-v", "-o", out, "-w", "%{http_code}")
	if req.framing != framingNone {
		args = append(args, "--data-binary", "@"+req.bodyFile, "-H", "Content-Type: application/octet-stream")
	}
	switch req.framing {
	case framingContentLength:
		args = append(args, "-H", "Expect:")
	case framingChunked:
		args = append(args, "-H", "Expect:", "-H", "Transfer-Encoding: chunked")
	case framingExpect:
		args = append(args, "-H", "Expect: 100-continue")
	}
	stdout, stderr, err := runClient(ctx, false, append(args, req.url)...)
	if err != nil {
		return clientResult{err: err}
	}
	status, err := strconv.Atoi(strings.TrimSpace(string(stdout)))
	if err != nil {
		return clientResult{err: fmt.Errorf("curl's -w status %q: %v", stdout, err)}
	}
	body, err := os.ReadFile(out)
	if err != nil {
		return clientResult{err: err}
	}
	continues := len(curlContinue.FindAll(stderr, -1))
	return clientResult{Status: status, Body: string(body), Continues: &continues}
}

// runRaw makes the request over its own connection, framed by hand, and
// counts every 100 Continue that arrives before the final answer. With
// Expect it sends the body only after the first 100 Continue, as RFC 9110
// section 10.1.1 lets a client do.
func runRaw(ctx context.Context, _ []string, req interopRequest) clientResult {
	u, err := url.Parse(req.url)
	if err != nil {
		return clientResult{err: err}
	}
	var body []byte
	if req.framing != framingNone {
		if body, err = os.ReadFile(req.bodyFile); err != nil {
			return clientResult{err: err}
		}
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return clientResult{err: err}
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(clientTimeout))
	bw, br := bufio.NewWriterSize(conn, 64<<10), bufio.NewReader(conn)
	bw.WriteString(rawHead(req.framing, u, len(body)))
	if err := bw.Flush(); err != nil {
		return clientResult{err: err}
	}
	continues, sent := 0, req.framing != framingExpect
	if sent && req.framing != framingNone {
		if err := writeBody(bw, body, req.framing == framingChunked); err != nil {
			return clientResult{err: fmt.Errorf("sending the body: %w", err)}
		}
	}
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return clientResult{err: fmt.Errorf("reading the answer after %d 100 Continue: %w", continues, err)}
		}
		if resp.StatusCode >= 200 {
			r := readResponse(resp)
			return clientResult{Status: r.status, Body: string(r.body), Continues: &continues, err: r.err}
		}
		if resp.StatusCode != http.StatusContinue {
			continue
		}
		continues++
		if !sent {
			sent = true
			if err := writeBody(bw, body, false); err != nil {
				return clientResult{err: fmt.Errorf("sending the body: %w", err)}
			}
		}
	}
}

// rawHead is the request head of runRaw's request.
func rawHead(framing string, u *url.URL, size int) string {
	method := http.MethodPost
	if framing == framingNone {
		method = http.MethodGet
	}
	head := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, u.RequestURI(), u.Host)
	switch framing {
	case framingContentLength, framingExpect:
		head += fmt.Sprintf("Content-Type: application/octet-stream\r\nContent-Length: %d\r\n", size)
	case framingChunked:
		head += "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n"
	}
	if framing == framingExpect {
		head += "Expect: 100-continue\r\n"
	}
	return head + "\r\n"
}
