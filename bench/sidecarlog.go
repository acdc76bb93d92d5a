package bench

import (
	"bufio"
	"encoding/json"
	"os"
	"strings"
	"time"
)

// SidecarGrants is what sidecars logged about their grants: why each
// started (its cause) and how long each took from the token request to the
// stored key set ("refreshed key set", its duration): the slot wait and
// the keystore lock come before and are not in it.
type SidecarGrants struct {
	Causes    map[string]int
	Durations []time.Duration
}

// readSidecarGrants reads the grant lines of Caddy logs (JSON, one entry a
// line, durations in seconds as Caddy's default encoder writes them).
func readSidecarGrants(logs ...string) (SidecarGrants, error) {
	g := SidecarGrants{Causes: map[string]int{}}
	for _, path := range logs {
		f, err := os.Open(path)
		if err != nil {
			return g, err
		}
		s := bufio.NewScanner(f)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		for s.Scan() {
			line := s.Bytes()
			if !strings.Contains(string(line), "key set\"") {
				continue
			}
			var entry struct {
				Msg      string  `json:"msg"`
				Cause    string  `json:"cause"`
				Duration float64 `json:"duration"`
			}
			if json.Unmarshal(line, &entry) != nil {
				continue
			}
			switch entry.Msg {
			case "refreshing key set":
				g.Causes[entry.Cause]++
			case "refreshed key set":
				g.Durations = append(g.Durations, time.Duration(entry.Duration*float64(time.Second)))
			}
		}
		f.Close()
		if err := s.Err(); err != nil {
			return g, err
		}
	}
	return g, nil
}
