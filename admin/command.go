package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/answer"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "oauth2-upstream",
		Usage: "status|seed|refresh|connect-url [<key set>] [--json] [--address <admin>] [--config <path> [--adapter <name>]]",
		Short: "Shows, seeds, refreshes and connects the key sets of a running oauth2_upstream sidecar",
		Long: `
Talks to the admin endpoint of a running Caddy (its /oauth2_upstream/ routes).
No answer holds a token value.

  status [<key set>]        every key set's state (all pages), or one's
  seed <key set>            store a token response, or a bare refresh token,
                            read from --file or standard input, as the key
                            set's next generation
  refresh <key set>         make a grant now
  connect-url <key set>     the address of the key set's Connect button on
                            the oauth2_upstream_connect page

The admin endpoint is --address (unix/<path> for a socket, as in Caddy's
admin option), else the admin option of --config (or of a Caddyfile in the
working directory), else Caddy's default, ` + caddy.DefaultAdminListen + `.`,
		CobraFunc: func(cmd *cobra.Command) {
			flags := cmd.PersistentFlags()
			flags.String("address", "", "Address of the admin endpoint (unix/<path> for a socket)")
			flags.StringP("config", "c", "", "Configuration file to read the admin address from (if --address is not used)")
			flags.StringP("adapter", "a", "", "Name of the config adapter of --config")
			flags.Bool("json", false, "Print the admin endpoint's JSON answer")
			status := &cobra.Command{Use: "status [<key set>]", Short: "Shows the state of every key set, or of one",
				Args: cobra.MaximumNArgs(1), RunE: caddycmd.WrapCommandFuncForCobra(cmdStatus)}
			status.Flags().Int("page-size", live.DefaultListLimit, "Key sets asked for per page")
			seed := &cobra.Command{Use: "seed <key set>", Short: "Stores a token response (or a refresh token) from --file or standard input",
				Args: cobra.ExactArgs(1), RunE: caddycmd.WrapCommandFuncForCobra(cmdSeed)}
			seed.Flags().String("file", "", "File holding the token response or refresh token (default: standard input)")
			refresh := &cobra.Command{Use: "refresh <key set>", Short: "Makes a grant for a key set now",
				Args: cobra.ExactArgs(1), RunE: caddycmd.WrapCommandFuncForCobra(cmdRefresh)}
			connectURL := &cobra.Command{Use: "connect-url <key set>", Short: "Prints the address of a key set's Connect button",
				Args: cobra.ExactArgs(1), RunE: caddycmd.WrapCommandFuncForCobra(cmdConnectURL)}
			cmd.AddCommand(status, seed, refresh, connectURL)
		},
	})
}

// maxSeedInput caps what seed reads: the admin endpoint takes at most this.
const maxSeedInput = maxBody

// adminAddress is the admin endpoint the flags name.
func adminAddress(fl caddycmd.Flags) (string, error) {
	config := fl.String("config")
	if fl.String("address") == "" && config == "" {
		if _, err := os.Stat("Caddyfile"); err == nil {
			config = "Caddyfile" // as Caddy's own commands do
		}
	}
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, config, fl.String("adapter"))
	if err != nil {
		return "", fmt.Errorf("finding the admin endpoint: %w", err)
	}
	return addr, nil
}

// adminDo sends one request to the admin endpoint and returns the answer's
// body and headers; an error answer becomes an error naming its detail.
func adminDo(fl caddycmd.Flags, method, uri string, body io.Reader) ([]byte, http.Header, error) {
	addr, err := adminAddress(fl)
	if err != nil {
		return nil, nil, err
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, uri, make(http.Header), body)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s at %s: %w", method, uri, addr, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("reading the answer to %s %s: %w", method, uri, err)
	}
	return data, resp.Header, nil
}

// cmdStatus prints every key set's status, following the list's pages
// (Link rel="next"), or one key set's.
func cmdStatus(fl caddycmd.Flags) (int, error) {
	var statuses []credential.Status
	if name := fl.Arg(0); name != "" {
		s, err := oneStatus(fl, http.MethodGet, answer.AdminPrefix+"key_sets/"+url.PathEscape(name), nil)
		if err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		statuses = append(statuses, s)
	} else {
		size := fl.Int("page-size")
		next := answer.AdminPrefix + "key_sets?" + url.Values{"limit": {strconv.Itoa(size)}}.Encode()
		for next != "" {
			data, header, err := adminDo(fl, http.MethodGet, next, nil)
			if err != nil {
				return caddy.ExitCodeFailedStartup, err
			}
			var page []credential.Status
			if err := json.Unmarshal(data, &page); err != nil {
				return caddy.ExitCodeFailedStartup, fmt.Errorf("decoding the key set list: %w", err)
			}
			statuses = append(statuses, page...)
			next = nextLink(header.Values("Link"))
		}
	}
	return printStatuses(fl, statuses)
}

// cmdSeed stores a token response, or a bare refresh token, as the key
// set's next generation. It reads the value from a file or standard input,
// never from an argument, which would show in process lists and shell
// histories.
func cmdSeed(fl caddycmd.Flags) (int, error) {
	name := fl.Arg(0)
	if err := keystore.ValidateName(name); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	in := io.Reader(os.Stdin)
	if path := fl.String("file"); path != "" && path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		defer f.Close()
		in = f
	}
	body, err := seedBody(in)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	s, err := oneStatus(fl, http.MethodPut, answer.AdminPrefix+"key_sets/"+name, bytes.NewReader(body))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	return printStatuses(fl, []credential.Status{s})
}

// seedBody is the PUT body for what seed read: a JSON object as it is, any
// other text as the refresh token of a token response.
func seedBody(in io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(in, maxSeedInput+1))
	if err != nil {
		return nil, fmt.Errorf("reading the token: %w", err)
	}
	if len(data) > maxSeedInput {
		return nil, fmt.Errorf("the token is larger than %d bytes", maxSeedInput)
	}
	text := strings.TrimSpace(string(data))
	switch {
	case text == "":
		return nil, errors.New("no token given: pipe a token response (JSON) or a refresh token into seed, or name a file with --file")
	case strings.HasPrefix(text, "{"):
		return []byte(text), nil
	}
	return json.Marshal(map[string]string{keystore.FieldRefreshToken: text})
}

// cmdRefresh makes a grant for the key set now.
func cmdRefresh(fl caddycmd.Flags) (int, error) {
	s, err := oneStatus(fl, http.MethodPost, answer.AdminPrefix+"key_sets/"+url.PathEscape(fl.Arg(0))+"/refresh", nil)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	return printStatuses(fl, []credential.Status{s})
}

// cmdConnectURL prints where the key set is connected in a browser.
func cmdConnectURL(fl caddycmd.Flags) (int, error) {
	data, _, err := adminDo(fl, http.MethodGet, answer.ConnectAdminPrefix+url.PathEscape(fl.Arg(0)), nil)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if fl.Bool("json") {
		os.Stdout.Write(data)
		return caddy.ExitCodeSuccess, nil
	}
	var connectURL answer.ConnectURL
	if err := json.Unmarshal(data, &connectURL); err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("decoding the answer: %w", err)
	}
	fmt.Println(connectURL.ConnectURL)
	return caddy.ExitCodeSuccess, nil
}

func oneStatus(fl caddycmd.Flags, method, uri string, body io.Reader) (credential.Status, error) {
	var s credential.Status
	data, _, err := adminDo(fl, method, uri, body)
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("decoding the key set status: %w", err)
	}
	return s, nil
}

// printStatuses prints statuses as JSON (--json: an array, or one object
// for one key set's command) or as a table.
func printStatuses(fl caddycmd.Flags, statuses []credential.Status) (int, error) {
	if fl.Bool("json") {
		var v any = statuses
		if fl.Arg(0) != "" && len(statuses) == 1 {
			v = statuses[0]
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		return caddy.ExitCodeSuccess, nil
	}
	if err := writeStatusTable(os.Stdout, statuses); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	return caddy.ExitCodeSuccess, nil
}

// writeStatusTable writes statuses as a table, then, for each key set that
// is not ok, its state in words and what to do (credential.DescribeState).
func writeStatusTable(w io.Writer, statuses []credential.Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY SET\tSTATE\tPROVIDER\tGENERATION\tEXPIRY\tLAST REFRESH\tERROR")
	for _, s := range statuses {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", s.Name, s.State, dash(s.Provider), s.Generation,
			cliTime(s.Expiry), cliTime(s.LastRefresh), dash(s.ErrorCode))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	first := true
	for _, s := range statuses {
		if s.State == credential.StateOK {
			continue
		}
		if first {
			fmt.Fprintln(w)
			first = false
		}
		if _, err := fmt.Fprintf(w, "%s (%s): %s\n", s.Name, s.State, credential.DescribeState(s.State, s.ErrorCode)); err != nil {
			return err
		}
	}
	return nil
}

func cliTime(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// nextLink returns the target of the rel="next" link among Link header
// values (RFC 8288), "" when there is none.
func nextLink(values []string) string {
	for _, v := range values {
		for _, link := range strings.Split(v, ",") {
			target, params, ok := strings.Cut(link, ";")
			target = strings.TrimSpace(target)
			if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
				continue
			}
			for _, p := range strings.Split(params, ";") {
				key, value, _ := strings.Cut(strings.TrimSpace(p), "=")
				rels := strings.Fields(strings.Trim(value, `"`))
				if strings.EqualFold(key, "rel") && slices.ContainsFunc(rels, func(r string) bool { return strings.EqualFold(r, "next") }) {
					return strings.TrimSuffix(strings.TrimPrefix(target, "<"), ">")
				}
			}
		}
	}
	return ""
}
