package supervisor

import (
	"reflect"
	"regexp"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// Every Config field has exactly one entry in the table, and every entry
// points to a field of Config, of a type the table supports.
func TestSettingsCoverConfig(t *testing.T) {
	var c Config
	v := reflect.ValueOf(&c).Elem()
	type place struct {
		addr uintptr
		typ  reflect.Type
	}
	fields := map[place]string{}
	for i := range v.NumField() {
		fields[place{v.Field(i).Addr().Pointer(), v.Field(i).Type()}] = v.Type().Field(i).Name
	}
	keyOf := map[string]string{} // field name -> key
	for _, s := range Settings() {
		p := reflect.ValueOf(s.Field(&c))
		if p.Kind() != reflect.Pointer {
			t.Errorf("setting %q: Field gives a %s, want a pointer to a field of Config", s.Key, p.Type())
			continue
		}
		name, ok := fields[place{p.Pointer(), p.Type().Elem()}]
		if !ok {
			t.Errorf("setting %q: Field points to no field of Config", s.Key)
			continue
		}
		if k, dup := keyOf[name]; dup {
			t.Errorf("Config.%s: set by two entries, %q and %q", name, k, s.Key)
		}
		keyOf[name] = s.Key
		switch p.Interface().(type) {
		case *string, *int, *time.Duration, *[]string:
		default:
			t.Errorf("setting %q: Config.%s is a %s; want string, int, time.Duration or []string (or teach the table the type)", s.Key, name, p.Type().Elem())
		}
		if s.def != nil && reflect.TypeOf(s.def) != p.Type().Elem() {
			t.Errorf("setting %q: default %#v is a %T, want a %s", s.Key, s.def, s.def, p.Type().Elem())
		}
	}
	for i := range v.NumField() {
		if name := v.Type().Field(i).Name; keyOf[name] == "" {
			t.Errorf("Config.%s has no entry in the settings table (settings.go): add one", name)
		}
	}
}

// Keys are unique snake_case; shorthands unique single letters; only
// command has no flag; every flag has a help text.
func TestSettingsEntries(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`)
	keys, shorts := map[string]bool{}, map[string]string{}
	for _, s := range Settings() {
		if !snake.MatchString(s.Key) || keys[s.Key] {
			t.Errorf("key %q: want a snake_case key used once", s.Key)
		}
		keys[s.Key] = true
		if (s.Flag() == "") != (s.Key == "command") {
			t.Errorf("key %q: flag %q; want a flag for every key but command", s.Key, s.Flag())
		}
		if s.Flag() != "" && s.Usage == "" {
			t.Errorf("--%s: no help text", s.Flag())
		}
		if s.Short != "" {
			if len(s.Short) != 1 || shorts[s.Short] != "" || s.Short == "c" || s.Short == "h" {
				t.Errorf("--%s: shorthand %q; want one letter, not c (--config), h (--help) or another flag's (%s)", s.Flag(), s.Short, shorts[s.Short])
			}
			shorts[s.Short] = s.Key
		}
	}
}

// Config's YAML form has every key in the table's order and loads back
// to the same settings.
func TestMarshalYAMLRoundTrip(t *testing.T) {
	good, err := LoadFile("../testdata/configs/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := yaml.Marshal(good.Config)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var got, want []string
	for i := 0; i < len(doc.Content[0].Content); i += 2 {
		got = append(got, doc.Content[0].Content[i].Value)
	}
	for _, s := range Settings() {
		want = append(want, s.Key)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("keys\n got %v\nwant %v", got, want)
	}
	back, err := LoadFile(writeConfig(t, string(b)))
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if !reflect.DeepEqual(back.Config, good.Config) {
		t.Errorf("loads back as\n %+v\nwant\n %+v", back.Config, good.Config)
	}
}
