package k8s_test

import (
	"bytes"
	"debug/elf"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// repoRoot is the build context: the repository root, one level above this package.
const repoRoot = ".."

// Where the image keeps its configuration, and how it runs Caddy.
const imageCaddyfile = "/etc/caddy/Caddyfile"

var wantCommand = []string{"caddy", "run", "--config", imageCaddyfile, "--adapter", "caddyfile"}

// parseDockerfile parses the repository's Dockerfile with BuildKit's own parser, failing on
// its parse and lint warnings, as `docker build` would print them.
func parseDockerfile(t *testing.T) []instructions.Stage {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	result, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("parsing the Dockerfile: %v", err)
	}
	for _, w := range result.Warnings {
		t.Errorf("Dockerfile: %s", w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, location []parser.Range) {
		t.Errorf("Dockerfile lint %s at %v: %s", rule, location, msg)
	}})
	stages, _, err := instructions.Parse(result.AST, lint)
	if err != nil {
		t.Fatalf("parsing the Dockerfile's instructions: %v", err)
	}
	return stages
}

// stageCommands returns the commands of stage of type T, in order.
func stageCommands[T instructions.Command](stage instructions.Stage) []T {
	var cmds []T
	for _, c := range stage.Commands {
		if cmd, ok := c.(T); ok {
			cmds = append(cmds, cmd)
		}
	}
	return cmds
}

// TestDockerfileFinalStage covers the image's run-time contract: built in a separate stage,
// run as a numeric non-root user (Kubernetes' runAsNonRoot can only verify a numeric one),
// with port 8080, Caddy's data under /data, and `caddy run` on the Caddyfile the image ships.
func TestDockerfileFinalStage(t *testing.T) {
	t.Parallel()
	stages := parseDockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("the Dockerfile has %d stage(s); want a builder and a final stage", len(stages))
	}
	final := stages[len(stages)-1]
	if !strings.HasPrefix(final.BaseName, "gcr.io/distroless/static") && final.BaseName != "scratch" {
		t.Errorf("final stage FROM %s; want distroless static or scratch", final.BaseName)
	}

	users := stageCommands[*instructions.UserCommand](final)
	if len(users) == 0 {
		t.Errorf("final stage has no USER; it would run as root")
	} else if user := users[len(users)-1].User; !numericNonRoot(user) {
		t.Errorf("final stage USER %q; want numeric non-zero uid[:gid]", user)
	}

	var ports []string
	for _, e := range stageCommands[*instructions.ExposeCommand](final) {
		ports = append(ports, e.Ports...)
	}
	if !slices.Contains(ports, "8080") && !slices.Contains(ports, "8080/tcp") {
		t.Errorf("final stage EXPOSE %q; want 8080", ports)
	}

	if got := imageCommand(t, final); len(got) == 0 || path.Base(got[0]) != wantCommand[0] || !slices.Equal(got[1:], wantCommand[1:]) {
		t.Errorf("final stage runs %q; want %q", got, wantCommand)
	}

	env := map[string]string{}
	for _, e := range stageCommands[*instructions.EnvCommand](final) {
		for _, kv := range e.Env {
			env[kv.Key] = kv.Value
		}
	}
	if env["XDG_DATA_HOME"] != "/data" {
		t.Errorf("final stage XDG_DATA_HOME = %q; want /data", env["XDG_DATA_HOME"])
	}
}

func numericNonRoot(user string) bool {
	for _, id := range strings.Split(user, ":") {
		n, err := strconv.ParseUint(id, 10, 32)
		if err != nil || n == 0 {
			return false
		}
	}
	return true
}

// imageCommand returns what the image runs by default: ENTRYPOINT then CMD, both in exec
// form (a shell form would need a shell, which distroless does not have).
func imageCommand(t *testing.T, stage instructions.Stage) []string {
	t.Helper()
	var command []string
	if eps := stageCommands[*instructions.EntrypointCommand](stage); len(eps) > 0 {
		ep := eps[len(eps)-1]
		if ep.PrependShell {
			t.Errorf("ENTRYPOINT is in shell form; want exec form")
		}
		command = append(command, ep.CmdLine...)
	}
	if cmds := stageCommands[*instructions.CmdCommand](stage); len(cmds) > 0 {
		cmd := cmds[len(cmds)-1]
		if cmd.PrependShell {
			t.Errorf("CMD is in shell form; want exec form")
		}
		command = append(command, cmd.CmdLine...)
	}
	return command
}

// TestDockerfileCopiesItsInputs covers an image built from files that are missing or that
// .dockerignore keeps out of the build context: the binary the final stage copies is the
// one the builder writes and the entrypoint runs, the Caddyfile comes from a file in the
// repository, and neither it nor any Go source the build needs is ignored.
func TestDockerfileCopiesItsInputs(t *testing.T) {
	t.Parallel()
	stages := parseDockerfile(t)
	builder, final := stages[0], stages[len(stages)-1]
	build := builderGoBuild(t, builder)

	command := imageCommand(t, final)
	if len(command) == 0 {
		t.Fatalf("the final stage has no ENTRYPOINT or CMD")
	}
	var sources []string
	binaryCopied := false
	for _, c := range stageCommands[*instructions.CopyCommand](final) {
		switch {
		case c.From == builder.Name && slices.Contains(c.SourcePaths, build.output):
			binaryCopied = c.DestPath == command[0]
		case c.From == "":
			if c.DestPath == imageCaddyfile {
				sources = append(sources, c.SourcePaths...)
			}
		}
	}
	if !binaryCopied {
		t.Errorf("the final stage does not copy the builder's %s to the entrypoint", build.output)
	}
	if len(sources) != 1 {
		t.Fatalf("the final stage copies %q to %s; want one file from the repository", sources, imageCaddyfile)
	}
	if _, err := os.Stat(filepath.Join(repoRoot, sources[0])); err != nil {
		t.Errorf("COPY %s %s: %v", sources[0], imageCaddyfile, err)
	}

	ignored := dockerignore(t)
	needed := append([]string{"go.mod", "go.sum", sources[0]}, goSources(t)...)
	for _, file := range needed {
		if excluded, err := ignored.MatchesOrParentMatches(file); err != nil || excluded {
			t.Errorf(".dockerignore excludes %s from the build context (err %v)", file, err)
		}
	}
	if excluded, _ := ignored.MatchesOrParentMatches(".git/HEAD"); !excluded {
		t.Errorf(".dockerignore sends .git to the builder")
	}
}

func dockerignore(t *testing.T) *patternmatcher.PatternMatcher {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatalf("reading .dockerignore: %v", err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	return pm
}

// goSources lists the repository's non-test Go files, slash-separated and relative to it.
func goSources(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(repoRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			rel, err := filepath.Rel(repoRoot, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// goBuild is the builder stage's go build command.
type goBuild struct {
	env    []string // NAME=value assignments before the command
	args   []string // after "go build"
	output string   // the -o argument
}

// builderGoBuild finds the builder's RUN of go build, which must be that one command alone so
// this test can run exactly it.
func builderGoBuild(t *testing.T, builder instructions.Stage) goBuild {
	t.Helper()
	if !strings.HasPrefix(builder.BaseName, "golang:") {
		t.Errorf("builder stage FROM %s; want golang:<version>", builder.BaseName)
	}
	lex := shell.NewLex('\\')
	for _, run := range stageCommands[*instructions.RunCommand](builder) {
		line := strings.Join(run.CmdLine, " ")
		if !strings.Contains(line, "go build") {
			continue
		}
		words, err := lex.ProcessWords(line, emptyEnv{})
		if err != nil {
			t.Fatalf("splitting RUN %s: %v", line, err)
		}
		var build goBuild
		for len(words) > 0 && strings.Contains(words[0], "=") {
			build.env, words = append(build.env, words[0]), words[1:]
		}
		if len(words) < 2 || words[0] != "go" || words[1] != "build" || slices.ContainsFunc(words, isShellOperator) {
			t.Fatalf("RUN %s: want one [NAME=value...] go build command", line)
		}
		build.args = words[2:]
		if i := slices.Index(build.args, "-o"); i >= 0 && i+1 < len(build.args) {
			build.output = build.args[i+1]
		}
		if build.output == "" {
			t.Fatalf("RUN %s: want -o <file>", line)
		}
		return build
	}
	t.Fatalf("the builder stage runs no go build")
	return goBuild{}
}

func isShellOperator(word string) bool {
	return slices.Contains([]string{"&&", "||", ";", "|", ">", "<"}, word)
}

// emptyEnv expands no variable: the builder's go build line must not depend on any.
type emptyEnv struct{}

func (emptyEnv) Get(string) (string, bool) { return "", false }
func (emptyEnv) Keys() []string            { return nil }

// TestDockerfileBuilderMatchesGoMod covers a builder image too old for go.mod's go line (the
// golang image does not download toolchains: GOTOOLCHAIN=local).
func TestDockerfileBuilderMatchesGoMod(t *testing.T) {
	t.Parallel()
	builder := parseDockerfile(t)[0]
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if m == nil {
		t.Fatalf("go.mod has no go line")
	}
	tag, _ := strings.CutPrefix(builder.BaseName, "golang:")
	if tag != string(m[1]) && !strings.HasPrefix(tag, string(m[1])+".") && !strings.HasPrefix(tag, string(m[1])+"-") {
		t.Errorf("builder FROM %s; want golang:%s (go.mod says go %s)", builder.BaseName, m[1], m[1])
	}
}

// TestDockerfileBuildCommand checks the builder's go build line itself, so that -short runs,
// which skip the build below, still catch a change to it.
func TestDockerfileBuildCommand(t *testing.T) {
	t.Parallel()
	build := builderGoBuild(t, parseDockerfile(t)[0])
	if !slices.Contains(build.env, "CGO_ENABLED=0") {
		t.Errorf("go build runs with %q; want CGO_ENABLED=0", build.env)
	}
	if !slices.Contains(build.args, "-trimpath") || build.args[len(build.args)-1] != "./cmd/caddy" {
		t.Errorf("go build %q; want -trimpath ... ./cmd/caddy", build.args)
	}
}

// TestDockerfileBuildIsStatic runs the builder's go build command line here, with the output
// moved to a temporary directory, and checks that the binary needs nothing from the
// distroless image: no cgo, no dynamic loader, no dynamic section; and that -trimpath kept
// the build machine's paths out of it.
func TestDockerfileBuildIsStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Caddy; skipped in -short mode")
	}
	t.Parallel()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	build := builderGoBuild(t, parseDockerfile(t)[0])
	binary := filepath.Join(t.TempDir(), "caddy")
	args := slices.Clone(build.args)
	args[slices.Index(args, "-o")+1] = binary
	cmd := exec.Command(goTool, append([]string{"build"}, args...)...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), build.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %q: %v\n%s", args, err, out)
	}

	out, err := exec.Command(goTool, "version", "-m", binary).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	settings := buildSettings(string(out))
	for key, want := range map[string]string{"CGO_ENABLED": "0", "-trimpath": "true"} {
		if settings[key] != want {
			t.Errorf("go version -m: build %s=%q; want %q", key, settings[key], want)
		}
	}

	f, err := elf.Open(binary)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP || prog.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary has a %v program header; want a static executable", prog.Type)
		}
	}
	if f.Section(".interp") != nil || f.Section(".dynamic") != nil {
		t.Errorf("the binary has an .interp or .dynamic section; want a static executable")
	}
}

// buildSettings returns the "build" lines of `go version -m` output as key → value.
func buildSettings(out string) map[string]string {
	settings := map[string]string{}
	for line := range strings.Lines(out) {
		fields := strings.SplitN(strings.TrimSpace(line), "\t", 2)
		if len(fields) == 2 && fields[0] == "build" {
			key, value, _ := strings.Cut(fields[1], "=")
			settings[key] = value
		}
	}
	return settings
}
