package rspamd

import (
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

func TestParseAddress(t *testing.T) {
	for _, c := range []struct{ in, want, err string }{
		{"http://127.0.0.1:11333", "http://127.0.0.1:11333", ""},
		{"http://127.0.0.1:11333/", "http://127.0.0.1:11333", ""},
		{"127.0.0.1:11333", "http://127.0.0.1:11333", ""},
		{"rspamd.internal:11333", "http://rspamd.internal:11333", ""},
		{"[::1]:11333", "http://[::1]:11333", ""},
		{"http://[::1]:11334", "http://[::1]:11334", ""},
		{"https://127.0.0.1:11333", "", "HTTPCrypt"},
		{"tcp://127.0.0.1:11333", "", "scheme must be http://"},
		{"http://127.0.0.1", "", "want http://host:port"},
		{"127.0.0.1", "", "want http://host:port"},
		{":11333", "", "want http://host:port"},
		{"http://127.0.0.1:0", "", "from 1 to 65535"},
		{"127.0.0.1:http", "", "from 1 to 65535"},
		{"http://127.0.0.1:11333/checkv2", "", "nothing more"},
		{"http://u:p@127.0.0.1:11333", "", "nothing more"},
		{"http://127.0.0.1:11333?x=1", "", "nothing more"},
		{"http://%zz", "", "not an rspamd address"},
	} {
		got, err := ParseAddress(c.in)
		if c.err == "" && (err != nil || got != c.want) {
			t.Errorf("ParseAddress(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
		if c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("ParseAddress(%q) = %q, %v; want an error saying %q", c.in, got, err, c.err)
		}
	}
}

func TestParseCheck(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     *filters.SpamReport
		err      string
	}{
		{"gtube", `{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"x@y","time_real":0.1}`,
			&filters.SpamReport{Score: 15, Required: 15, Action: "reject", Symbols: []filters.SpamSymbol{{Name: "GTUBE"}}}, ""},
		{"skipped", `{"is_skipped":true,"score":0,"required_score":15,"action":"no action","symbols":{}}`,
			&filters.SpamReport{Required: 15, Action: "no action", Skipped: true}, ""},
		{"symbols sorted, options kept", `{"score":2.5,"required_score":15,"action":"no action","symbols":{
			"Z":{"score":2.6},"A":{"score":-0.1,"options":["text/plain","x\u0000y"]}}}`,
			&filters.SpamReport{Score: 2.5, Required: 15, Action: "no action", Symbols: []filters.SpamSymbol{
				{Name: "A", Score: -0.1, Options: []string{"text/plain", "x y"}}, {Name: "Z", Score: 2.6}}}, ""},
		{"milter", `{"score":6,"required_score":15,"action":"rewrite subject","subject":"*** SPAM *** hi\r\n\tthere",
			"milter":{"add_headers":{
				"X-Spamd-Bar":"++++++",
				"Authentication-Results":{"order":1,"value":"vm;\n\tdkim=none;\n\tspf=none"},
				"X-Two":[{"value":"1","order":0},"2"]},
			"remove_headers":{"X-Spam":0,"Authentication-Results":1}}}`,
			&filters.SpamReport{Score: 6, Required: 15, Action: "rewrite subject", Subject: "*** SPAM *** hi there",
				AddHeaders: []filters.HeaderField{
					{Name: "Authentication-Results", Value: "vm; dkim=none; spf=none"},
					{Name: "X-Spamd-Bar", Value: "++++++"},
					{Name: "X-Two", Value: "1"}, {Name: "X-Two", Value: "2"}},
				RemoveHeaders: []string{"Authentication-Results", "X-Spam"}}, ""},
		{"a value from the message made safe", `{"score":1,"required_score":15,"action":"no action",
			"milter":{"add_headers":{"X-A":"evil\r\nBcc: victim@example.org"}}}`,
			&filters.SpamReport{Score: 1, Required: 15, Action: "no action",
				AddHeaders: []filters.HeaderField{{Name: "X-A", Value: "evil Bcc: victim@example.org"}}}, ""},
		{"not json", `<html>It works!</html>`, nil, "not an rspamd answer"},
		{"trailing", fakeReply + `{}`, nil, "not an rspamd answer"},
		{"array", `[1,2]`, nil, "not an rspamd answer"},
		{"empty", ``, nil, "not an rspamd answer"},
		{"no action", `{"score":1,"required_score":15}`, nil, "no score, required_score or action"},
		{"no score", `{"required_score":15,"action":"reject"}`, nil, "no score, required_score or action"},
		{"null score", `{"score":null,"required_score":15,"action":"reject"}`, nil, "no score, required_score or action"},
		{"empty action", `{"score":1,"required_score":15,"action":"\u0007"}`, nil, "empty action"},
		{"string score", `{"score":"1","required_score":15,"action":"reject"}`, nil, "not an rspamd answer"},
		{"error", `{"error":"Message has no body"}`, nil, "rspamd error"},
		{"symbols not an object", `{"score":1,"required_score":15,"action":"reject","symbols":[]}`, nil, "not an rspamd answer"},
		{"nameless symbol", `{"score":1,"required_score":15,"action":"reject","symbols":{"\u200b":{"score":1}}}`, nil, "without a name"},
		{"bad header name", `{"score":1,"required_score":15,"action":"reject","milter":{"add_headers":{"X A":"v"}}}`, nil, "not a header field name"},
		{"bad header value", `{"score":1,"required_score":15,"action":"reject","milter":{"add_headers":{"X-A":{"order":1}}}}`, nil, "want a string"},
		{"bad remove", `{"score":1,"required_score":15,"action":"reject","milter":{"remove_headers":{"X-A":"all"}}}`, nil, "want a header field name and a number"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseCheck([]byte(c.in))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) || got != nil {
					t.Fatalf("got %+v, %v; want an error saying %q", got, err, c.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %+v, %v\nwant %+v", got, err, c.want)
			}
		})
	}
}

// FuzzParseCheck: whatever rspamd (or something in its place) answers, the
// parser returns an error or a report whose texts are safe to write into a
// header: valid UTF-8, no control characters, header names valid.
func FuzzParseCheck(f *testing.F) {
	for _, s := range []string{
		fakeReply,
		`{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"score":0}}}`,
		`{"score":6,"required_score":15,"action":"rewrite subject","subject":"x","milter":{"add_headers":{"A":"b","C":{"value":"d","order":1},"E":["f",{"value":"g"}]},"remove_headers":{"X":0}}}`,
		`{"score":1e308,"required_score":-0,"action":"\ud800"}`,
		`{"error":"x"}`, `null`, `{}`, `[]`, `"pong"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := parseCheck(data)
		if err != nil {
			if r != nil {
				t.Fatal("a report with an error")
			}
			return
		}
		if !json.Valid(data) {
			t.Fatalf("a report from invalid JSON %q", data)
		}
		texts := []string{r.Action, r.Subject}
		for _, s := range r.Symbols {
			texts = append(texts, s.Name)
			texts = append(texts, s.Options...)
		}
		for _, h := range r.AddHeaders {
			if !mailtext.ValidFieldName(h.Name) {
				t.Fatalf("header name %q", h.Name)
			}
			texts = append(texts, h.Value)
		}
		for _, n := range r.RemoveHeaders {
			if !mailtext.ValidFieldName(n) {
				t.Fatalf("header name %q", n)
			}
		}
		for _, s := range texts {
			if !utf8.ValidString(s) || strings.IndexFunc(s, mailtext.IsControl) >= 0 || len(s) > maxText {
				t.Fatalf("unsafe text %q", s)
			}
		}
		if r.Action == "" {
			t.Fatal("empty action")
		}
	})
}

func TestLearnAnswer(t *testing.T) {
	for _, c := range []struct {
		name string
		a    answer
		is   error // errors.Is target; nil with ok for success
		ok   bool
		text string
	}{
		{"learned", answer{code: 200, status: "200 OK", body: []byte(`{"success":true}`)}, nil, true, ""},
		{"not success", answer{code: 200, status: "200 OK", body: []byte(`{"success":false}`)}, nil, false, "success: false"},
		{"not rspamd", answer{code: 200, status: "200 OK", body: []byte(`pong`)}, nil, false, "is not rspamd's"},
		{"too few tokens", answer{code: 204, status: "204 <undef> contains less tokens than required for bayes classifier: 3 < 11"},
			ErrTooFewTokens, false, "too few tokens to learn: contains less tokens than required for bayes classifier: 3 < 11"},
		{"already", answer{code: 208, status: "208 <a@b> has been already learned as ham, ignore it", body: []byte(`{"error":"<a@b> has been already learned as ham, ignore it"}`)},
			ErrAlreadyLearned, false, "already learned: <a@b> has been already learned as ham"},
		{"password", answer{code: 401, status: "401 Unauthorized", body: []byte(`{"error":"Unauthorized"}`)}, nil, false, "refused the password"},
		{"other", answer{code: 500, status: "500 invalid command", body: []byte(`{"error":"invalid command"}`)}, nil, false, "500 invalid command"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := learnAnswer("ctl", c.a)
			switch {
			case c.ok && err != nil:
				t.Fatalf("%v, want nil", err)
			case c.ok:
				return
			case err == nil || !strings.Contains(err.Error(), c.text):
				t.Fatalf("%v, want an error saying %q", err, c.text)
			case (c.is != nil) != NotLearned(err) || (c.is != nil && !errors.Is(err, c.is)):
				t.Fatalf("%v: NotLearned %v, want errors.Is %v", err, NotLearned(err), c.is)
			}
			if c.a.code == http.StatusUnauthorized && NotLearned(err) {
				t.Fatal("a refused password is a failure")
			}
		})
	}
}
