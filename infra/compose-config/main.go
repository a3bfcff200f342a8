// compose-config: docker-compose.yml as Docker Compose reads it (the compose-spec reference loader, compose-go:
// the .env file, ${VAR:-default} / ${VAR:?error} interpolation, YAML anchors and merge keys, defaults), printed as
// JSON like `docker compose config --format json`. No Docker engine is needed.
//
//	go build -o compose-config . && ./compose-config [-env-file FILE] [-project-directory DIR] COMPOSE_FILE
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	envFile := flag.String("env-file", "", "the .env file (default: .env beside the compose file)")
	projectDir := flag.String("project-directory", "", "the project directory (default: the compose file's folder)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: compose-config [-env-file FILE] [-project-directory DIR] COMPOSE_FILE")
		os.Exit(2)
	}
	options := []cli.ProjectOptionsFn{cli.WithOsEnv}
	if *projectDir != "" {
		options = append(options, cli.WithWorkingDirectory(*projectDir))
	}
	if *envFile != "" {
		options = append(options, cli.WithEnvFiles(*envFile))
	}
	options = append(options, cli.WithDotEnv, cli.WithInterpolation(true), cli.WithResolvedPaths(true))
	project, err := cli.NewProjectOptions(flag.Args(), options...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	loaded, err := project.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := loaded.MarshalJSON()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Stdout.Write(append(out, '\n'))
}
