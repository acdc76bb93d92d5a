package sidecar

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"time"
)

// Messages of the oauth2_upstream handler that the tests and the demo follow.
const (
	MsgRefreshing = "refreshing key set"
	MsgRefreshed  = "refreshed key set"
	MsgReplaying  = "replaying request with refreshed token"
	MsgFailed     = "refreshing key set failed"
)

// Entry is one line of Caddy's JSON log.
type Entry struct {
	Level  string
	At     time.Time
	Logger string
	Msg    string
	// Fields holds every field of the line, the ones above included.
	Fields map[string]any
}

// String returns a field as text ("" when absent).
func (e Entry) String(name string) string {
	switch v := e.Fields[name].(type) {
	case nil:
		return ""
	case string:
		return v
	case float64:
		if v == math.Trunc(v) {
			return fmt.Sprintf("%.0f", v)
		}
		return fmt.Sprint(v)
	default:
		return fmt.Sprint(v)
	}
}

// Int returns a numeric field, 0 when absent.
func (e Entry) Int(name string) int64 {
	v, _ := e.Fields[name].(float64)
	return int64(v)
}

// Time returns a time field (Caddy logs times as Unix seconds), the zero
// time when absent.
func (e Entry) Time(name string) time.Time {
	ts, ok := e.Fields[name].(float64)
	if !ok {
		return time.Time{}
	}
	sec, frac := math.Modf(ts)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// Bool returns a boolean field, false when absent.
func (e Entry) Bool(name string) bool {
	v, _ := e.Fields[name].(bool)
	return v
}

// ParseEntry parses one JSON log line; ok is false for anything else (Caddy
// prints a few plain lines before its logger is set up).
func ParseEntry(line []byte) (Entry, bool) {
	var fields map[string]any
	if err := json.Unmarshal(line, &fields); err != nil {
		return Entry{}, false
	}
	e := Entry{Fields: fields}
	e.Level, _ = fields["level"].(string)
	e.Logger, _ = fields["logger"].(string)
	e.Msg, _ = fields["msg"].(string)
	e.At = e.Time("ts")
	return e, true
}

// ReadEntries parses every JSON line of r.
func ReadEntries(r io.Reader) ([]Entry, error) {
	var entries []Entry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		if e, ok := ParseEntry(sc.Bytes()); ok {
			entries = append(entries, e)
		}
	}
	return entries, sc.Err()
}

// Entries reads the sidecar's log so far.
func (p *Process) Entries() ([]Entry, error) {
	f, err := os.Open(p.LogPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadEntries(f)
}

// Count returns how many entries have message msg.
func Count(entries []Entry, msg string) int {
	n := 0
	for _, e := range entries {
		if e.Msg == msg {
			n++
		}
	}
	return n
}
