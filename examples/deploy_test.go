package examples_test

// Checks of the deployment examples that are not HCL: examples/haproxy.cfg
// (also run for real by internal/e2e/haproxy_test.go), popgate.service,
// docker/Dockerfile and grafana/popgate.json. The .hcl files are loaded by
// policy/examples_test.go.

import (
	"bufio"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/metrics"
	"github.com/popgate/popgate/internal/testenv"
)

// TestEveryExampleChecked fails for a file in examples/ that no test loads:
// a new kind of example needs its check here (or in policy's for .hcl).
func TestEveryExampleChecked(t *testing.T) {
	checked := map[string]string{
		"haproxy.cfg":                       "TestHAProxyExample, internal/e2e TestHAProxyScaleOut",
		"popgate.service":                   "TestSystemdUnit",
		"docker/Dockerfile":                 "TestDockerfile",
		"docker/Dockerfile.dockerignore":    "TestDockerfile",
		"grafana/popgate.json":              "TestGrafanaDashboard",
		"examples.go":                       "TestDemo (the package itself)",
		"examples_test.go":                  "test code",
		"deploy_test.go":                    "test code",
		"clamd_test.go":                     "test code",
		"clamd/popgate-eicar.hdb":           "TestClamdSignatures",
		"clamd/popgate-eicar.ndb":           "TestClamdSignatures",
		"clamd/popgate-clamav-testfile.hdb": "TestClamdSignatures",
		"popgate.logrotate":                 "TestLogrotateExample, internal/e2e TestLogRotation",
	}
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasSuffix(path, ".hcl") {
			return nil // policy/examples_test.go loads every *.hcl
		}
		if _, ok := checked[filepath.ToSlash(path)]; !ok {
			t.Errorf("examples/%s is checked by no test: add a check to examples/deploy_test.go", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func readExample(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestHAProxyExample checks the shape internal/e2e's scale-out test relies
// on, and that haproxy accepts the file (haproxy missing: see testenv.LookPath).
func TestHAProxyExample(t *testing.T) {
	cfg := readExample(t, "haproxy.cfg")
	for _, want := range []string{
		`(?m)^defaults\n(?:[ \t]+.*\n)*?[ \t]+mode tcp$`,
		`(?m)^[ \t]+timeout client 1[0-9]m$`, // at least popgate's idle_timeout (10m, RFC 1939)
		`(?m)^[ \t]+timeout server 1[0-9]m$`,
		`(?m)^[ \t]+option httpchk GET /readyz$`,
	} {
		if !regexp.MustCompile(want).MatchString(cfg) {
			t.Errorf("haproxy.cfg does not match %s", want)
		}
	}
	servers := regexp.MustCompile(`(?m)^[ \t]+server .*$`).FindAllString(cfg, -1)
	if len(servers) != 4 {
		t.Errorf("haproxy.cfg has %d server lines, want 4 (two instances, POP3 and POP3S)", len(servers))
	}
	for _, s := range servers {
		if !strings.Contains(s, " send-proxy-v2") || !regexp.MustCompile(` check port \d+`).MatchString(s) {
			t.Errorf("server line without send-proxy-v2 or a check on the metrics port: %s", strings.TrimSpace(s))
		}
	}
	// Skips, or fails under POPGATE_REQUIRE_INTEGRATION=1, without haproxy.
	haproxy := testenv.LookPath(t, "haproxy")
	// chroot and user are the packaged service's; haproxy -c checks they exist.
	tmp := filepath.Join(t.TempDir(), "haproxy.cfg")
	cfg = regexp.MustCompile(`(?m)^[ \t]*(chroot|user|group)\b.*\n`).ReplaceAllString(cfg, "")
	if err := os.WriteFile(tmp, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(haproxy, "-c", "-f", tmp).CombinedOutput(); err != nil {
		t.Errorf("haproxy -c: %v\n%s", err, out)
	}
}

// unitFile is a systemd unit: section → directive → values in order.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, text string) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		case section == "":
			t.Fatalf("popgate.service:%d: directive outside a section: %s", n, line)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("popgate.service:%d: not KEY=VALUE: %s", n, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

// TestLogrotateExample checks examples/popgate.logrotate (internal/e2e
// TestLogRotation runs logrotate with it): it rotates the log file the
// documentation names by renaming, and signals popgate's main process with
// SIGUSR1 afterwards.
func TestLogrotateExample(t *testing.T) {
	text := readExample(t, "popgate.logrotate")
	for _, want := range []string{"/var/log/popgate/popgate.log {", "postrotate", "--signal=USR1 popgate.service", "delaycompress", "endscript"} {
		if !strings.Contains(text, want) {
			t.Errorf("popgate.logrotate lacks %q", want)
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.TrimSpace(line) == "copytruncate" {
			t.Error("popgate.logrotate uses copytruncate: popgate reopens its file, truncating loses lines")
		}
	}
}

// TestSystemdUnit checks the hardening of examples/popgate.service, and
// runs `systemd-analyze verify` on it (missing: see testenv.LookPath).
func TestSystemdUnit(t *testing.T) {
	text := readExample(t, "popgate.service")
	u := parseUnit(t, text)
	svc := u["Service"]
	if svc == nil || u["Unit"] == nil || u["Install"] == nil {
		t.Fatalf("popgate.service lacks a [Unit], [Service] or [Install] section")
	}
	for k, want := range map[string]string{
		"User":                    "popgate",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"CapabilityBoundingSet":   "CAP_NET_BIND_SERVICE",
		"AmbientCapabilities":     "CAP_NET_BIND_SERVICE",
		"ReadWritePaths":          "/var/lib/popgate/quarantine",
		"Restart":                 "on-failure",
		"SystemCallFilter":        "@system-service",
		"SystemCallArchitectures": "native",
	} {
		if !slices.Contains(svc[k], want) {
			t.Errorf("[Service] %s = %q, want %q among them", k, svc[k], want)
		}
	}
	if got := svc["ReadWritePaths"]; len(got) != 1 {
		t.Errorf("ReadWritePaths = %q: only the quarantine may be writable", got)
	}
	if !slices.Contains(svc["ExecReload"], "/bin/kill -HUP $MAINPID") {
		t.Errorf("ExecReload = %q, want /bin/kill -HUP $MAINPID (SIGHUP reloads the policy)", svc["ExecReload"])
	}
	if start := svc["ExecStart"]; len(start) != 1 || !regexp.MustCompile(`^/\S+/popgate run -c /\S+$`).MatchString(start[0]) {
		t.Errorf("ExecStart = %q, want one `/…/popgate run -c /…`", start)
	}
	if len(svc["LimitNOFILE"]) != 1 {
		t.Errorf("LimitNOFILE not set: two descriptors per session")
	}
	if u := svc["User"]; slices.Contains(u, "root") {
		t.Errorf("User=root")
	}

	// Skips, or fails under POPGATE_REQUIRE_INTEGRATION=1, without systemd-analyze.
	sa := testenv.LookPath(t, "systemd-analyze")
	// verify insists that the programs exist: point them at one that does.
	dir := t.TempDir()
	path := filepath.Join(dir, "popgate.service")
	text = regexp.MustCompile(`/usr/local/bin/popgate`).ReplaceAllString(text, "/bin/true")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sa, "verify", path).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestDockerfile checks the structure of examples/docker/Dockerfile: a
// static build stage, a final stage that runs as a non-root user.
func TestDockerfile(t *testing.T) {
	text := readExample(t, filepath.Join("docker", "Dockerfile"))
	type instr struct{ op, args string }
	var stages [][]instr
	// Join continuation lines, drop comments.
	joined := regexp.MustCompile(`\\\n`).ReplaceAllString(text, " ")
	for _, line := range strings.Split(joined, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		op, args, _ := strings.Cut(line, " ")
		op = strings.ToUpper(op)
		if op == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("Dockerfile: %s before the first FROM", op)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], instr{op, strings.TrimSpace(args)})
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a build stage and a final stage", len(stages))
	}
	find := func(st []instr, op string) []string {
		var out []string
		for _, in := range st {
			if in.op == op {
				out = append(out, in.args)
			}
		}
		return out
	}
	build, final := stages[0], stages[len(stages)-1]
	if from := build[0].args; !strings.HasPrefix(from, "golang:1.26") || !strings.HasSuffix(from, " AS build") {
		t.Errorf("build stage FROM %q, want golang:1.26… AS build", from)
	}
	runs := strings.Join(find(build, "RUN"), "\n")
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/popgate"} {
		if !strings.Contains(runs, want) {
			t.Errorf("the build stage does not build with %s", want)
		}
	}
	users := find(final, "USER")
	if len(users) == 0 {
		t.Fatal("the final stage has no USER: it would run as root")
	}
	if u := strings.Split(users[len(users)-1], ":")[0]; u == "root" || u == "0" {
		t.Errorf("the final stage runs as USER %s", users[len(users)-1])
	}
	if !slices.ContainsFunc(find(final, "COPY"), func(a string) bool { return strings.Contains(a, "--from=build") }) {
		t.Error("the final stage copies nothing from the build stage")
	}
	ports := strings.Fields(strings.Join(find(final, "EXPOSE"), " "))
	sort.Strings(ports)
	if !slices.Equal(ports, []string{"110", "9110", "995"}) {
		t.Errorf("EXPOSE %v, want 110 995 9110", ports)
	}
	if len(find(final, "ENTRYPOINT")) != 1 {
		t.Error("the final stage has no ENTRYPOINT")
	}
	// The ignore file must not hide what the build needs.
	ignore := readExample(t, filepath.Join("docker", "Dockerfile.dockerignore"))
	for _, line := range strings.Split(ignore, "\n") {
		line = strings.TrimSpace(line)
		for _, needed := range []string{"go.mod", "go.sum", "cmd", "proxy", "filters", "policy", "examples"} {
			if line == needed || line == needed+"/" {
				t.Errorf("Dockerfile.dockerignore excludes %s, which the build needs", needed)
			}
		}
	}
}

// dashboardMetrics are the metric names (and their labels) the dashboard may
// use: popgate's own metrics, from its registry.
var dashboardMetrics = func() map[string][]string {
	m := map[string][]string{}
	for _, f := range metrics.New().Families() {
		m[f.Name] = f.Labels
	}
	return m
}()

// histograms are the dashboardMetrics that are histograms (their series are
// NAME_bucket, NAME_sum, NAME_count).
var histograms = func() []string {
	var out []string
	for _, f := range metrics.New().Families() {
		if f.Histogram {
			out = append(out, f.Name)
		}
	}
	return out
}()

// TestGrafanaDashboard checks examples/grafana/popgate.json: a dashboard
// model on the ${DS_PROMETHEUS} data source whose every expression uses only
// popgate's metrics and their labels, and that shows every metric.
func TestGrafanaDashboard(t *testing.T) {
	var dash struct {
		Title         string `json:"title"`
		UID           string `json:"uid"`
		SchemaVersion int    `json:"schemaVersion"`
		Templating    struct {
			List []struct {
				Name, Type string
			} `json:"list"`
		} `json:"templating"`
		Panels []json.RawMessage `json:"panels"`
	}
	raw := readExample(t, filepath.Join("grafana", "popgate.json"))
	if err := json.Unmarshal([]byte(raw), &dash); err != nil {
		t.Fatalf("popgate.json: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || dash.SchemaVersion < 36 {
		t.Errorf("title %q, uid %q, schemaVersion %d: want a titled dashboard with a uid and schemaVersion ≥ 36", dash.Title, dash.UID, dash.SchemaVersion)
	}
	if !slices.ContainsFunc(dash.Templating.List, func(v struct{ Name, Type string }) bool {
		return v.Name == "DS_PROMETHEUS" && v.Type == "datasource"
	}) {
		t.Error("no datasource variable DS_PROMETHEUS")
	}

	type target struct {
		Expr       string `json:"expr"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
	}
	type panel struct {
		ID         int    `json:"id"`
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		GridPos struct{ H, W, X, Y int } `json:"gridPos"`
		Targets []target                 `json:"targets"`
	}
	ids := map[int]bool{}
	used := map[string]bool{}
	metricRe := regexp.MustCompile(`\b[a-z_:][a-z0-9_:]*\b`)
	byRe := regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	matcherRe := regexp.MustCompile(`\{([^}]*)\}`)
	labelRe := regexp.MustCompile(`([a-z_][a-z0-9_]*)\s*(?:=~|!~|!=|=)`)
	promql := map[string]bool{ // functions, keywords, and the labels every series has
		"sum": true, "by": true, "rate": true, "increase": true, "histogram_quantile": true, "changes": true,
		"max": true, "min": true, "avg": true, "without": true, "le": true, "instance": true, "job": true,
	}
	for i, rawPanel := range dash.Panels {
		var p panel
		if err := json.Unmarshal(rawPanel, &p); err != nil {
			t.Fatalf("panel %d: %v", i, err)
		}
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != "${DS_PROMETHEUS}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: data source %q with %d targets, want ${DS_PROMETHEUS} and at least one", p.Title, p.Datasource.UID, len(p.Targets))
		}
		for _, tg := range p.Targets {
			expr := tg.Expr
			if tg.Datasource.UID != "${DS_PROMETHEUS}" {
				t.Errorf("panel %q: a target's data source is %q", p.Title, tg.Datasource.UID)
			}
			if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") {
				t.Errorf("panel %q: unbalanced expression %s", p.Title, expr)
			}
			// Metric names: every popgate_ identifier, outside strings.
			bare := regexp.MustCompile(`"[^"]*"`).ReplaceAllString(expr, `""`)
			var labels []string
			for _, name := range metricRe.FindAllString(bare, -1) {
				if !strings.HasPrefix(name, "popgate_") {
					continue
				}
				base := name
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					if h := strings.TrimSuffix(name, suf); h != name && slices.Contains(histograms, h) {
						base = h
					}
				}
				ls, ok := dashboardMetrics[base]
				if !ok {
					t.Errorf("panel %q uses %s, which is not a popgate metric", p.Title, name)
					continue
				}
				if base != name && !strings.HasSuffix(name, "_bucket") || base == name && slices.Contains(histograms, base) {
					t.Errorf("panel %q uses histogram series %s: quantiles need NAME_bucket", p.Title, name)
				}
				used[base] = true
				labels = append(labels, ls...)
			}
			// Labels grouped by or matched must belong to the metrics used.
			var named []string
			for _, m := range byRe.FindAllStringSubmatch(bare, -1) {
				for _, l := range strings.Split(m[1], ",") {
					named = append(named, strings.TrimSpace(l))
				}
			}
			for _, m := range matcherRe.FindAllStringSubmatch(expr, -1) {
				for _, l := range labelRe.FindAllStringSubmatch(m[1], -1) {
					named = append(named, l[1])
				}
			}
			for _, l := range named {
				if l != "" && !promql[l] && !slices.Contains(labels, l) {
					t.Errorf("panel %q: label %q belongs to none of the metrics in %s", p.Title, l, expr)
				}
			}
		}
	}
	for name := range dashboardMetrics {
		if !used[name] {
			t.Errorf("the dashboard shows no panel with %s", name)
		}
	}
}
