/* bf_yamlcheck FILE...: parses each file as a YAML stream with libyaml (the parser
 * backfill reads job files with) and prints FILE:LINE:COLUMN: problem for the
 * first syntax error of each. Exit 0 when all parse, 1 otherwise. For the
 * deployment files (compose, Kubernetes), which cannot be run here. */
#include <stdio.h>
#include <yaml.h>

int main(int argc, char **argv)
{
    int bad = 0;
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            perror(argv[i]);
            bad = 1;
            continue;
        }
        yaml_parser_t p;
        yaml_parser_initialize(&p);
        yaml_parser_set_input_file(&p, f);
        int docs = 0;
        for (;;) {
            yaml_event_t ev;
            if (!yaml_parser_parse(&p, &ev)) {
                fprintf(stderr, "%s:%zu:%zu: %s %s\n", argv[i], p.problem_mark.line + 1,
                        p.problem_mark.column + 1, p.problem ? p.problem : "syntax error",
                        p.context ? p.context : "");
                bad = 1;
                break;
            }
            int type = ev.type;
            docs += type == YAML_DOCUMENT_START_EVENT;
            yaml_event_delete(&ev);
            if (type == YAML_STREAM_END_EVENT) {
                printf("%s: %d document%s\n", argv[i], docs, docs == 1 ? "" : "s");
                break;
            }
        }
        yaml_parser_delete(&p);
        fclose(f);
    }
    return bad;
}
