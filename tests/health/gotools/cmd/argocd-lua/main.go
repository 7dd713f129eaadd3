// Command argocd-lua runs Argo CD health scripts the way Argo CD does: in gopher-lua
// (Lua 5.1) with only the libraries Argo CD opens (package, base, table and a safe
// os), the object in the global `obj`, and Argo CD's rule that an object being deleted
// is "Progressing" before any script runs.
//
//	argocd-lua eval SCRIPT    stdin: JSON array of objects; stdout: JSON array of verdicts
//	argocd-lua test DIR       runs DIR/health_test.yaml against DIR/health.lua, as Argo CD's
//	                          resource_customizations tests do; exit 1 on a mismatch
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// The statuses Argo CD accepts from a health script.
var known = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

func decode(state *lua.LState, value interface{}) lua.LValue {
	switch converted := value.(type) {
	case float64:
		return lua.LNumber(converted)
	case string:
		return lua.LString(converted)
	case bool:
		return lua.LBool(converted)
	case []interface{}:
		table := state.CreateTable(len(converted), 0)
		for _, item := range converted {
			table.Append(decode(state, item))
		}
		return table
	case map[string]interface{}:
		table := state.CreateTable(0, len(converted))
		for key, item := range converted {
			table.RawSetString(key, decode(state, item))
		}
		return table
	}
	return lua.LNil
}

func deleting(object map[string]interface{}) bool {
	metadata, _ := object["metadata"].(map[string]interface{})
	stamp, _ := metadata["deletionTimestamp"].(string)
	return stamp != ""
}

func evaluate(script string, object map[string]interface{}) (verdict, error) {
	if deleting(object) {
		return verdict{Status: "Progressing", Message: "Pending deletion"}, nil
	}
	state := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer state.Close()
	for _, library := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openSafeOs},
	} {
		state.Push(state.NewFunction(library.open))
		state.Push(lua.LString(library.name))
		state.Call(1, 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	state.SetContext(ctx)
	state.SetGlobal("obj", decode(state, object))
	if err := state.DoString(script); err != nil {
		return verdict{}, err
	}
	result, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		return verdict{}, fmt.Errorf("the script returned %s, not a table", state.Get(-1).Type())
	}
	found := verdict{
		Status:  lua.LVAsString(result.RawGetString("status")),
		Message: lua.LVAsString(result.RawGetString("message")),
	}
	if !known[found.Status] {
		return verdict{}, fmt.Errorf("the script returned the unknown health status %q", found.Status)
	}
	return found, nil
}

// openSafeOs is Argo CD's reduced os library: time and date only.
func openSafeOs(state *lua.LState) int {
	module := state.NewTable()
	state.SetField(module, "time", state.NewFunction(func(l *lua.LState) int {
		l.Push(lua.LNumber(time.Now().Unix()))
		return 1
	}))
	state.SetGlobal(lua.OsLibName, module)
	state.Push(module)
	return 1
}

type testCase struct {
	HealthStatus verdict `json:"healthStatus"`
	InputPath    string  `json:"inputPath"`
}

func runTests(dir string) error {
	script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(filepath.Join(dir, "health_test.yaml"))
	if err != nil {
		return err
	}
	var suite struct {
		Tests []testCase `json:"tests"`
	}
	if err := yaml.Unmarshal(raw, &suite); err != nil {
		return err
	}
	if len(suite.Tests) == 0 {
		return fmt.Errorf("%s/health_test.yaml has no tests", dir)
	}
	failures := 0
	for _, test := range suite.Tests {
		input, err := os.ReadFile(filepath.Join(dir, test.InputPath))
		if err != nil {
			return err
		}
		var object map[string]interface{}
		if err := yaml.Unmarshal(input, &object); err != nil {
			return fmt.Errorf("%s: %w", test.InputPath, err)
		}
		got, err := evaluate(string(script), object)
		if err != nil {
			return fmt.Errorf("%s: %w", test.InputPath, err)
		}
		if got != test.HealthStatus {
			failures++
			fmt.Printf("FAIL %s: got %+v, want %+v\n", test.InputPath, got, test.HealthStatus)
		} else {
			fmt.Printf("ok   %s: %s\n", test.InputPath, got.Status)
		}
	}
	if failures > 0 {
		return fmt.Errorf("%d of %d cases failed", failures, len(suite.Tests))
	}
	return nil
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: argocd-lua eval SCRIPT | argocd-lua test DIR")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "eval":
		script, err := os.ReadFile(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "argocd-lua:", err)
			os.Exit(2)
		}
		var objects []map[string]interface{}
		if err := json.NewDecoder(os.Stdin).Decode(&objects); err != nil {
			fmt.Fprintln(os.Stderr, "argocd-lua: reading objects:", err)
			os.Exit(2)
		}
		verdicts := make([]verdict, 0, len(objects))
		for _, object := range objects {
			found, err := evaluate(string(script), object)
			if err != nil {
				fmt.Fprintln(os.Stderr, "argocd-lua:", err)
				os.Exit(1)
			}
			verdicts = append(verdicts, found)
		}
		_ = json.NewEncoder(os.Stdout).Encode(verdicts)
	case "test":
		if err := runTests(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "argocd-lua:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "usage: argocd-lua eval SCRIPT | argocd-lua test DIR")
		os.Exit(2)
	}
}
