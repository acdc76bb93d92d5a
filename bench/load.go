package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Request is what a load run sends, over and over.
type Request struct {
	Method   string
	Path     string
	BodySize int64 // bytes of generated body, 0 for none
	Chunked  bool  // send the body chunked, without a Content-Length
	// EarlyAnswer: the server may answer before it has read the body
	// (an upstream that does not read it). The body is written while the
	// answer is read, and the connection is dropped after the answer,
	// which may have left part of the body unsent, as curl does.
	EarlyAnswer bool
}

// head is the request line and header block of r for host.
func (r Request) head(host string) []byte { return r.headWith(host, "") }

// headWith is head with the header lines extra (each ending in CRLF).
func (r Request) headWith(host, extra string) []byte {
	h := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: oauth2-upstream-bench\r\n%s", r.Method, r.Path, host, extra)
	if r.BodySize > 0 {
		h += "Content-Type: application/octet-stream\r\n" + bodyLengthHeader + ": " + strconv.FormatInt(r.BodySize, 10) + "\r\n"
		if r.Chunked {
			h += "Transfer-Encoding: chunked\r\n"
		} else {
			h += "Content-Length: " + strconv.FormatInt(r.BodySize, 10) + "\r\n"
		}
	}
	return []byte(h + "\r\n")
}

// bodyPattern is the generated request body, repeated as often as the size
// asks: bodies cost the client no memory and no disk, whatever their size.
var bodyPattern = func() []byte {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = byte(i ^ i>>8)
	}
	return b
}()

// conn is one keep-alive HTTP/1.1 client connection. The load generator
// writes requests by hand and reads answers with http.ReadResponse: far less
// client CPU per request than net/http's Transport, which on two cores
// would otherwise take much of what the proxies under test need.
type conn struct {
	addr    string
	head    []byte
	req     Request
	timeout time.Duration

	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

func newConn(addr string, req Request, timeout time.Duration) *conn {
	return &conn{addr: addr, head: req.head(addr), req: req, timeout: timeout}
}

func (c *conn) dial() error {
	nc, err := net.DialTimeout("tcp", c.addr, c.timeout)
	if err != nil {
		return err
	}
	c.c = nc
	if c.br == nil {
		c.br, c.bw = bufio.NewReaderSize(nc, 16<<10), bufio.NewWriterSize(nc, 32<<10)
	} else {
		c.br.Reset(nc)
		c.bw.Reset(nc)
	}
	return nil
}

func (c *conn) close() {
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
}

// do sends the request and reads the whole answer, redialling first when
// the previous answer closed the connection.
func (c *conn) do() (status int, err error) {
	if c.c == nil {
		if err := c.dial(); err != nil {
			return 0, err
		}
	}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	c.c.SetDeadline(time.Now().Add(c.timeout))
	if c.req.EarlyAnswer {
		return c.doEarly()
	}
	if err := c.write(); err != nil {
		return 0, err
	}
	resp, err := c.readAnswer()
	if err != nil {
		return 0, err
	}
	if resp.Close {
		c.close()
	}
	return resp.StatusCode, nil
}

// doEarly is do for Request.EarlyAnswer: the body is written on another
// goroutine, which the dropped connection stops.
func (c *conn) doEarly() (int, error) {
	wrote := make(chan error, 1)
	go func() { wrote <- c.write() }()
	resp, err := c.readAnswer()
	c.close()
	<-wrote // a write the closed connection cut short is no failure
	if err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
}

// readAnswer reads an answer and its whole body, after any interim (1xx)
// answers: a client must take those even when it did not ask for one (RFC
// 9110 section 15.2), and bare reverse_proxy passes on the 100 Continue of
// an upstream asked with Expect (bodiesBareExpect).
func (c *conn) readAnswer() (*http.Response, error) {
	resp, err := http.ReadResponse(c.br, nil)
	for err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 {
		resp, err = http.ReadResponse(c.br, nil)
	}
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, err
}

func (c *conn) write() error {
	c.bw.Write(c.head)
	for left := c.req.BodySize; left > 0; {
		p := bodyPattern[:min(left, int64(len(bodyPattern)))]
		if c.req.Chunked {
			fmt.Fprintf(c.bw, "%x\r\n", len(p))
		}
		if _, err := c.bw.Write(p); err != nil {
			return err
		}
		if c.req.Chunked {
			c.bw.WriteString("\r\n")
		}
		left -= int64(len(p))
	}
	if c.req.Chunked && c.req.BodySize > 0 {
		c.bw.WriteString("0\r\n\r\n")
	}
	return c.bw.Flush()
}

// LoadOptions bounds one closed-loop load run.
type LoadOptions struct {
	Conns       int           // concurrent connections, one request in flight on each
	Duration    time.Duration // how long requests are started
	MaxRequests int64         // at most this many requests in all
	Timeout     time.Duration // bound on one request
	// Accounts, when set, are X-Account header values that the requests
	// carry in turn, across all connections.
	Accounts []string
}

// accountHeads are the request heads of one request shape, one for each
// account, which requests take in turn: account selection costs the load
// generator an atomic add per request.
type accountHeads struct {
	heads [][]byte
	next  atomic.Uint64
}

func newAccountHeads(req Request, host string, accounts []string) *accountHeads {
	if len(accounts) == 0 {
		return nil
	}
	a := &accountHeads{heads: make([][]byte, len(accounts))}
	for i, name := range accounts {
		a.heads[i] = req.headWith(host, accountHeader+": "+name+"\r\n")
	}
	return a
}

// take returns the head of the next account.
func (a *accountHeads) take() []byte {
	return a.heads[(a.next.Add(1)-1)%uint64(len(a.heads))]
}

// RoundResult is what one load run measured.
type RoundResult struct {
	OK, Failed int64
	Elapsed    time.Duration
	Latencies  []time.Duration // of the successful requests, sorted
	FirstError string          // the first failure, for the report
	CPU        time.Duration   // the server's CPU time during the run, when measured
}

// RPS is the rate of successful requests.
func (r RoundResult) RPS() float64 { return float64(r.OK) / r.Elapsed.Seconds() }

// Percentile is the latency below which fraction p of the successful
// requests stayed.
func (r RoundResult) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	return r.Latencies[min(int(p*float64(len(r.Latencies))), len(r.Latencies)-1)]
}

// CPUPerRequest is the server's CPU time per successful request.
func (r RoundResult) CPUPerRequest() time.Duration {
	if r.OK == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.OK)
}

// RunLoad is a closed-loop load generator: Conns workers, each with its own
// keep-alive connection (dialled before the clock starts), send req to addr
// one after another until Duration has passed or MaxRequests were started.
func RunLoad(ctx context.Context, addr string, req Request, opt LoadOptions) (RoundResult, error) {
	conns := make([]*conn, opt.Conns)
	for i := range conns {
		conns[i] = newConn(addr, req, opt.Timeout)
		if err := conns[i].dial(); err != nil {
			for _, c := range conns[:i] {
				c.close()
			}
			return RoundResult{}, fmt.Errorf("dialling %s: %w", addr, err)
		}
	}
	var (
		budget  atomic.Int64
		wg      sync.WaitGroup
		results = make([]RoundResult, opt.Conns)
		heads   = newAccountHeads(req, addr, opt.Accounts)
	)
	budget.Store(opt.MaxRequests)
	start := time.Now()
	deadline := start.Add(opt.Duration)
	for i, c := range conns {
		wg.Go(func() {
			defer c.close()
			res := &results[i]
			res.Latencies = make([]time.Duration, 0, 4096)
			for ctx.Err() == nil && time.Now().Before(deadline) && budget.Add(-1) >= 0 {
				if heads != nil {
					c.head = heads.take()
				}
				t0 := time.Now()
				status, err := c.do()
				lat := time.Since(t0)
				switch {
				case err == nil && status < 300:
					res.OK++
					res.Latencies = append(res.Latencies, lat)
				default:
					res.Failed++
					if res.FirstError == "" {
						res.FirstError = describe(status, err)
					}
				}
			}
		})
	}
	wg.Wait()
	return mergeResults(results, time.Since(start)), ctx.Err()
}

func mergeResults(results []RoundResult, elapsed time.Duration) RoundResult {
	total := RoundResult{Elapsed: elapsed}
	for _, r := range results {
		total.OK += r.OK
		total.Failed += r.Failed
		total.Latencies = append(total.Latencies, r.Latencies...)
		if total.FirstError == "" {
			total.FirstError = r.FirstError
		}
	}
	slices.Sort(total.Latencies)
	return total
}

func describe(status int, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("status %d", status)
}

// BurstResult is what a burst of simultaneous requests measured.
type BurstResult struct {
	RoundResult
	Statuses map[int]int   // answers by status; 0 for transport errors
	Slowest  time.Duration // the longest any request took, successful or not
}

// Burst sends n copies of req to addr at once, each on its own connection,
// all dialled before the first request is written, and waits for every
// answer (each bounded by timeout).
func Burst(ctx context.Context, addr string, req Request, n int, timeout time.Duration) (BurstResult, error) {
	conns := make([]*conn, n)
	for i := range conns {
		conns[i] = newConn(addr, req, timeout)
		if err := conns[i].dial(); err != nil {
			for _, c := range conns[:i] {
				c.close()
			}
			return BurstResult{}, fmt.Errorf("dialling connection %d of %d to %s: %w", i+1, n, addr, err)
		}
	}
	var (
		wg       sync.WaitGroup
		release  = make(chan struct{})
		results  = make([]RoundResult, n)
		statuses = make([]int, n)
		all      = make([]time.Duration, n)
	)
	for i, c := range conns {
		wg.Go(func() {
			defer c.close()
			<-release
			t0 := time.Now()
			status, err := c.do()
			all[i], statuses[i] = time.Since(t0), status
			if err == nil && status < 300 {
				results[i].OK, results[i].Latencies = 1, []time.Duration{all[i]}
				return
			}
			results[i].Failed, results[i].FirstError = 1, describe(status, err)
		})
	}
	start := time.Now()
	close(release)
	wg.Wait()
	res := BurstResult{RoundResult: mergeResults(results, time.Since(start)), Statuses: map[int]int{}}
	for _, s := range statuses {
		res.Statuses[s]++
	}
	res.Slowest = slices.Max(all)
	return res, ctx.Err()
}
