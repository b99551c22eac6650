// Package profiling serves the Go runtime's profiles of the running
// process over HTTP, for `go tool pprof`: finding where a busy gateway's
// CPU goes should not need a rebuilt binary. It imports runtime/pprof, not
// net/http/pprof, which would also register itself on
// http.DefaultServeMux.
package profiling

import (
	"fmt"
	"net/http"
	"runtime/pprof"
	"strconv"
	"time"
)

// MaxSeconds bounds a CPU profile's duration.
const MaxSeconds = 120

// Handler serves, under the path it is mounted at (with the prefix
// stripped): "profile?seconds=N" (a CPU profile of N seconds, default 10),
// and each named runtime profile ("heap", "allocs", "goroutine", "block",
// "mutex", "threadcreate") as a snapshot; "" lists them. Every answer is
// pprof's binary format except the list.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "profile?seconds=N (CPU, at most %d s)\n", MaxSeconds)
		for _, p := range pprof.Profiles() {
			fmt.Fprintf(w, "%s\n", p.Name())
		}
	})
	mux.HandleFunc("GET /profile", cpu)
	mux.HandleFunc("GET /{name}", func(w http.ResponseWriter, r *http.Request) {
		p := pprof.Lookup(r.PathValue("name"))
		if p == nil {
			http.Error(w, "no such profile", http.StatusNotFound)
			return
		}
		binary(w, p.Name())
		_ = p.WriteTo(w, 0)
	})
	return mux
}

func cpu(w http.ResponseWriter, r *http.Request) {
	secs := 10
	if s := r.URL.Query().Get("seconds"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxSeconds {
			http.Error(w, fmt.Sprintf("seconds must be 1 to %d", MaxSeconds), http.StatusBadRequest)
			return
		}
		secs = n
	}
	binary(w, "cpu") // before the profiler may write
	// Only one CPU profile runs at a time in a process.
	if err := pprof.StartCPUProfile(w); err != nil {
		w.Header().Del("Content-Disposition")
		http.Error(w, "a CPU profile is already being taken", http.StatusConflict)
		return
	}
	select {
	case <-time.After(time.Duration(secs) * time.Second):
	case <-r.Context().Done():
	}
	pprof.StopCPUProfile()
}

func binary(w http.ResponseWriter, name string) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.pprof"`)
}
