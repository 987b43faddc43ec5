#!/bin/sh
# A stand-in for the Claude Code CLI (`claude`), used by the tests and by `claude-issue-solver demo`. It
# accepts the flags the daemon passes, reads the prompt from stdin like `claude -p` does, and acts out a
# scenario picked by a line `FAKE_CLAUDE_SCENARIO=<name>` in the prompt, else the FAKE_CLAUDE_SCENARIO
# environment variable, else `demo` when run as `--model scripted-stand-in` (how the demo runs it), else
# `edit`. Its stdout mimics the real CLI's JSON / stream-json shapes.
#
# Only POSIX sh and busybox applets are used so the same file runs in a busybox-only image and on a
# host with dash + coreutils.
#
# Scenarios:
#   demo         fix the demo's issue for real: subtract() in calc.sh subtracts, a regression test in
#                check.sh, the tests run (`sh check.sh`, red then green); writes a PR summary with the
#                tests' counts; success with the true turn count and no cost
#   edit         append to CLAUDE_FIX.md, write .claude-pr-summary.md, success (result has prompt-sha256=<hex>)
#   noop         change nothing, success ("Nothing to change: ...")
#   invalid-key  subtype success but is_error:true, api_error_status 401, exit 1
#   max-turns    subtype error_max_turns, errors:[...], no result key, exit 1
#   hang         never finish (until killed)
#   garbage      non-JSON on stdout, a line on stderr, exit 2
#   wait         after the init line, poll for ./.fake-claude-release, delete it, then act as edit
#   write-fail   as edit; named for tests that make cwd unwritable: the result then says "Tool error"
#                while is_error stays false, like the real CLI
#   tests-fix    the sample repository with tests (calc.sh, test.sh): the first run fixes add() but
#                breaks sub(); a run resumed (--resume) with the failing output fixes sub() too
#   tests-red    as tests-fix, but a resumed run never repairs sub()
# The tests-* scenarios put the scenario in the session id (<scenario>.<uuid>), so a run given
# --resume <id> (whose prompt is the test failure, with no scenario line) continues the same scenario.
# As root, --dangerously-skip-permissions needs IS_SANDBOX=1, as with the real CLI.

# The prompt may hold any bytes; in a UTF-8 locale GNU sed's `.` skips invalid sequences.
LC_ALL=C
export LC_ALL
set -u

VERSION=2.1.197

output_format=text
verbose=0
max_turns=
resume=
model=claude-sonnet-4-5-20250929
skip_permissions=0

while [ $# -gt 0 ]; do
    case $1 in
        -v | --version)
            printf '%s (Claude Code)\n' "$VERSION"
            exit 0
            ;;
        -h | --help)
            printf 'Usage: claude [options] [prompt]\n\n(fake Claude Code CLI for tests)\n'
            exit 0
            ;;
        --output-format=*) output_format=${1#*=} ;;
        --max-turns=*) max_turns=${1#*=} ;;
        --model=*) model=${1#*=} ;;
        --output-format | --max-turns | --model | --append-system-prompt | --resume)
            # Guard the value shift: `shift` past the end aborts dash.
            if [ $# -ge 2 ]; then
                case $1 in
                    --resume) resume=$2 ;;
                    --output-format) output_format=$2 ;;
                    --max-turns) max_turns=$2 ;;
                    --model) model=$2 ;;
                esac
                shift
            fi
            ;;
        --verbose) verbose=1 ;;
        --dangerously-skip-permissions) skip_permissions=1 ;;
        *) ;; # -p and anything unknown: accepted and ignored, as the daemon only relies on the above
    esac
    shift
done

case $output_format in
    text | json) ;;
    stream-json)
        if [ "$verbose" != 1 ]; then
            echo "Error: When using --print, --output-format=stream-json requires --verbose" >&2
            exit 1
        fi
        ;;
    *)
        echo "error: option '--output-format <format>' argument '$output_format' is invalid." >&2
        exit 1
        ;;
esac

# The real CLI refuses this combination; mirroring it catches a backend that runs the agent as root.
if [ "$skip_permissions" = 1 ] && [ "$(id -u)" = 0 ] && [ "${IS_SANDBOX:-}" != 1 ]; then
    echo "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons" >&2
    exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fake-claude.XXXXXX") || {
    echo "fake-claude: cannot create a temporary directory" >&2
    exit 3
}
trap 'rm -rf "$tmp"' EXIT
# sh ignores SIGTERM as PID 1 unless trapped; `docker stop` should not have to wait for SIGKILL.
trap 'exit 143' TERM
trap 'exit 130' INT

# A file, not a variable: command substitution would drop NULs and trailing newlines and the hash
# must match the prompt byte for byte.
cat >"$tmp/prompt"
prompt_sha=$(sha256sum <"$tmp/prompt" | cut -d ' ' -f 1)

scenario=$(sed -n 's/^.*FAKE_CLAUDE_SCENARIO=\([A-Za-z0-9_-]*\).*$/\1/p' "$tmp/prompt" | head -n 1)
case $resume in tests-*.*) [ -n "$scenario" ] || scenario=${resume%%.*} ;; esac
[ -n "$scenario" ] || scenario=${FAKE_CLAUDE_SCENARIO:-}
# The model name the demo runs the stand-in under (STAND_IN_MODEL in messages.py, which the daemon reads
# to sign the PR as a stand-in's): its one skill is the demo's fix.
if [ -z "$scenario" ] && [ "$model" = scripted-stand-in ]; then scenario=demo; fi
[ -n "$scenario" ] || scenario=edit

start=$(date +%s)
session_id=$(cat /proc/sys/kernel/random/uuid 2>/dev/null) ||
    session_id=$(printf '%s' "$prompt_sha" | sed 's/^\(.\{8\}\)\(.\{4\}\)\(.\{4\}\)\(.\{4\}\)\(.\{12\}\).*/\1-\2-\3-\4-\5/')
cwd=$(pwd)
case $scenario in
    tests-*) if [ -n "$resume" ]; then session_id=$resume; else session_id=$scenario.$session_id; fi ;;
esac

# Print $1 as a JSON string literal. The trailing "." sentinel keeps a final newline from being
# swallowed by awk's record splitting; it is cut off again in END.
json_str() {
    printf '%s.' "$1" |
        tr -d '\000-\010\013\014\016-\037' |
        sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e "s/$(printf '\t')/\\\\t/g" -e "s/$(printf '\r')/\\\\r/g" |
        awk 'NR > 1 { out = out "\\n" } { out = out $0 } END { printf "\"%s\"", substr(out, 1, length(out) - 1) }'
}

uuid() {
    cat /proc/sys/kernel/random/uuid 2>/dev/null || printf '00000000-0000-4000-8000-%012d' "$$"
}

model_json=$(json_str "$model")
session_json=$(json_str "$session_id")
cwd_json=$(json_str "$cwd")

usage='{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":34,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard"}'
model_usage() { # $1 = cost in USD
    printf '{%s:{"inputTokens":12,"outputTokens":34,"cacheReadInputTokens":0,"cacheCreationInputTokens":0,"webSearchRequests":0,"costUSD":%s,"contextWindow":200000}}' "$model_json" "$1"
}
turns=0

# Messages go out as they happen in stream-json (one printf per line so a reader sees each as it
# comes), are collected for the JSON array of `--output-format json --verbose`, and are dropped
# for plain json/text.
emit() {
    if [ "$output_format" = stream-json ]; then
        printf '%s\n' "$1"
    elif [ "$output_format" = json ] && [ "$verbose" = 1 ]; then
        printf '%s\n' "$1" >>"$tmp/messages"
    fi
}

# $1 = result object, $2 = text for --output-format text, $3 = exit code.
finish() {
    case $output_format in
        stream-json) printf '%s\n' "$1" ;;
        json)
            if [ "$verbose" = 1 ]; then
                printf '%s\n' "$1" >>"$tmp/messages"
                awk 'BEGIN { printf "[" } NR > 1 { printf "," } { printf "%s", $0 } END { print "]" }' \
                    "$tmp/messages"
            else
                printf '%s\n' "$1"
            fi
            ;;
        text) printf '%s\n' "$2" ;;
    esac
    exit "$3"
}

elapsed_ms() {
    echo $((($(date +%s) - start) * 1000 + 1234))
}

# $1 = result text; $2 = turns and $3 = cost in USD (defaults: the figures the tests expect).
success() {
    d=$(elapsed_ms)
    n=${2:-3}
    cost=${3:-0.0123}
    finish "{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"api_error_status\":null,\"duration_ms\":$d,\"duration_api_ms\":$((d - 200)),\"num_turns\":$n,\"result\":$(json_str "$1"),\"stop_reason\":\"end_turn\",\"session_id\":$session_json,\"total_cost_usd\":$cost,\"usage\":$usage,\"modelUsage\":$(model_usage "$cost"),\"permission_denials\":[],\"terminal_reason\":\"completed\",\"uuid\":\"$(uuid)\"}" "$1" 0
}

assistant() { # $1 = content array; one model message, one turn
    turns=$((turns + 1))
    emit "{\"type\":\"assistant\",\"message\":{\"id\":\"msg_fake_$(uuid | tr -d '-')\",\"type\":\"message\",\"role\":\"assistant\",\"model\":$model_json,\"content\":$1,\"stop_reason\":null,\"stop_sequence\":null,\"usage\":$usage},\"parent_tool_use_id\":null,\"session_id\":$session_json,\"uuid\":\"$(uuid)\"}"
}

tool_result() { # $1 = tool_use_id, $2 = text, $3 = is_error
    emit "{\"type\":\"user\",\"message\":{\"role\":\"user\",\"content\":[{\"tool_use_id\":\"$1\",\"type\":\"tool_result\",\"content\":$(json_str "$2"),\"is_error\":$3}]},\"parent_tool_use_id\":null,\"session_id\":$session_json,\"uuid\":\"$(uuid)\"}"
}

init() {
    if [ "$skip_permissions" = 1 ]; then mode=bypassPermissions; else mode=default; fi
    emit "{\"type\":\"system\",\"subtype\":\"init\",\"cwd\":$cwd_json,\"session_id\":$session_json,\"tools\":[\"Task\",\"Bash\",\"Glob\",\"Grep\",\"Read\",\"Edit\",\"Write\",\"TodoWrite\"],\"mcp_servers\":[],\"model\":$model_json,\"permissionMode\":\"$mode\",\"slash_commands\":[],\"apiKeySource\":\"ANTHROPIC_API_KEY\",\"claude_code_version\":\"$VERSION\",\"output_style\":\"default\",\"agents\":[],\"skills\":[],\"plugins\":[],\"uuid\":\"$(uuid)\"}"
}

# The edit itself, shared by `edit`, `wait` and `write-fail`. Like the real CLI, a failed write is a
# tool error the model reads, not a failed run: the result still says is_error:false.
do_edit() {
    assistant '[{"type":"text","text":"I will make the change the issue asks for."}]'
    assistant "[{\"type\":\"tool_use\",\"id\":\"toolu_fake_write\",\"name\":\"Write\",\"input\":{\"file_path\":$(json_str "$cwd/CLAUDE_FIX.md"),\"content\":\"Fixed by the fake agent.\\n\"}}]"
    if {
        printf 'Fixed by the fake agent (prompt-sha256=%s).\n' "$prompt_sha" >>CLAUDE_FIX.md &&
            printf 'Fix issue from fake agent\n\nThe fake agent appended a line to CLAUDE_FIX.md.\n\nprompt-sha256: %s\n' \
                "$prompt_sha" >.claude-pr-summary.md
    } 2>/dev/null; then
        tool_result toolu_fake_write "File created successfully at: $cwd/CLAUDE_FIX.md" false
        success "Done. prompt-sha256=$prompt_sha"
    else
        tool_result toolu_fake_write "EACCES: permission denied, open '$cwd/CLAUDE_FIX.md'" true
        success "Tool error: permission denied writing $cwd/CLAUDE_FIX.md. prompt-sha256=$prompt_sha"
    fi
}

# The demo's issue fixed as the bug prompt asks: read, reproduce with a test, fix, run the tests, summarize.
# With sed and awk only; the sample is a shell project, so its tests (`sh check.sh`) run here too.
do_demo_fix() {
    code=calc.sh
    tests=check.sh
    assistant "[{\"type\":\"text\",\"text\":\"I will read $code and its tests first.\"},{\"type\":\"tool_use\",\"id\":\"toolu_stand_in_read_code\",\"name\":\"Read\",\"input\":{\"file_path\":$(json_str "$cwd/$code")}}]"
    if [ ! -f "$code" ] || [ ! -f "$tests" ]; then
        tool_result toolu_stand_in_read_code "File does not exist." true
        text="This is not the demo's sample repository (no $code and $tests): the scripted stand-in can fix only that one, so I changed nothing."
        assistant "[{\"type\":\"text\",\"text\":$(json_str "$text")}]"
        success "$text" "$turns" 0
    fi
    tool_result toolu_stand_in_read_code "$(awk '{ printf "%6d\t%s\n", NR, $0 }' "$code")" false
    assistant "[{\"type\":\"tool_use\",\"id\":\"toolu_stand_in_read_tests\",\"name\":\"Read\",\"input\":{\"file_path\":$(json_str "$cwd/$tests")}}]"
    tool_result toolu_stand_in_read_tests "$(awk '{ printf "%6d\t%s\n", NR, $0 }' "$tests")" false

    # Only inside subtract(): add() keeps its `+`.
    sed '/^subtract()/,/^}/ s/\$((\$1 + \$2))/$(($1 - $2))/' "$code" >"$tmp/code"
    if cmp -s "$code" "$tmp/code"; then
        text="subtract() in $code does not print \$((\$1 + \$2)): there is nothing for me to fix."
        assistant "[{\"type\":\"text\",\"text\":$(json_str "$text")}]"
        success "$text" "$turns" 0
    fi

    anchor='check test_subtract 2 subtract 5 3'
    added='check test_subtract_below_zero -2 subtract 3 5'
    # After test_subtract, or after the last test if that one was reworded.
    ANCHOR=$anchor ADDED=$added awk '
        { line[NR] = $0 }
        $0 == ENVIRON["ANCHOR"] && !at { at = NR }
        /^check / { last = NR }
        END {
            if (!at) at = last
            for (i = 1; i <= NR; i++) { print line[i]; if (i == at) print ENVIRON["ADDED"] }
            if (!at) print ENVIRON["ADDED"]
        }
    ' "$tests" >"$tmp/tests"
    assistant "[{\"type\":\"text\",\"text\":\"subtract() prints \$1 + \$2. First a test that fails because of that (subtract 3 5 prints 8, not -2).\"},{\"type\":\"tool_use\",\"id\":\"toolu_stand_in_test\",\"name\":\"Edit\",\"input\":{\"file_path\":$(json_str "$cwd/$tests"),\"old_string\":$(json_str "$anchor"),\"new_string\":$(json_str "$anchor
$added")}}]"
    write_file toolu_stand_in_test "$tests" "$tmp/tests"
    run_tests toolu_stand_in_red "Run the tests: the new one should fail on the old code."

    assistant "[{\"type\":\"text\",\"text\":\"It fails as expected. Now the fix.\"},{\"type\":\"tool_use\",\"id\":\"toolu_stand_in_fix\",\"name\":\"Edit\",\"input\":{\"file_path\":$(json_str "$cwd/$code"),\"old_string\":$(json_str 'subtract() {
    echo $(($1 + $2))'),\"new_string\":$(json_str 'subtract() {
    echo $(($1 - $2))')}}]"
    write_file toolu_stand_in_fix "$code" "$tmp/code"
    if run_tests toolu_stand_in_green "Run the tests again."; then
        ran="\`sh check.sh\` after the fix: $tests_said."
    else
        ran="\`sh check.sh\` after the fix is still red ($tests_said); see the Tests section."
    fi

    cat >"$tmp/summary" <<SUMMARY
Fix subtract(): it added its arguments instead of subtracting them

\`subtract a b\` in \`calc.sh\` printed \`a + b\`; it now prints \`a - b\`, so \`subtract 5 3\` is \`2\` and
\`test_subtract\` passes.

New test in \`check.sh\`: \`test_subtract_below_zero\` (\`subtract 3 5\` is \`-2\`), which fails on the old code.

$ran
SUMMARY
    assistant "[{\"type\":\"tool_use\",\"id\":\"toolu_stand_in_summary\",\"name\":\"Write\",\"input\":{\"file_path\":$(json_str "$cwd/.claude-pr-summary.md"),\"content\":$(json_str "$(cat "$tmp/summary")")}}]"
    write_file toolu_stand_in_summary .claude-pr-summary.md "$tmp/summary" created

    text="Fixed subtract() in $code (it printed \$1 + \$2) and added test_subtract_below_zero to $tests. $ran"
    assistant "[{\"type\":\"text\",\"text\":$(json_str "$text")}]"
    success "$text" "$turns" 0
}

# $1 = tool_use id, $2 = what the model says first. Runs the sample's tests for real (a Bash tool call);
# its last line (the counts) lands in $tests_said; the status is the tests'.
run_tests() {
    assistant "[{\"type\":\"text\",\"text\":$(json_str "$2")},{\"type\":\"tool_use\",\"id\":\"$1\",\"name\":\"Bash\",\"input\":{\"command\":\"sh check.sh\",\"description\":\"Run the calculator's tests\"}}]"
    if sh check.sh >"$tmp/tests.out" 2>&1; then status=0; else status=$?; fi
    tests_said=$(tail -n 1 "$tmp/tests.out")
    if [ "$status" = 0 ]; then
        tool_result "$1" "$(cat "$tmp/tests.out")" false
    else
        tool_result "$1" "$(cat "$tmp/tests.out")
Exit code $status" true
    fi
    return "$status"
}

# The follow-up `demo --follow-up` asks for: a test that subtracting a number from itself gives 0.
do_demo_follow_up() {
    tests=check.sh
    assistant "[{\"type\":\"text\",\"text\":\"Continuing session $resume: the maintainer asks for one more test.\"},{\"type\":\"tool_use\",\"id\":\"toolu_stand_in_reread\",\"name\":\"Read\",\"input\":{\"file_path\":$(json_str "$cwd/$tests")}}]"
    if [ ! -f "$tests" ]; then
        tool_result toolu_stand_in_reread "File does not exist." true
        text="There is no $tests here: the scripted stand-in can continue only the demo's sample, so I changed nothing."
        assistant "[{\"type\":\"text\",\"text\":$(json_str "$text")}]"
        success "$text" "$turns" 0
    fi
    tool_result toolu_stand_in_reread "$(awk '{ printf "%6d\t%s\n", NR, $0 }' "$tests")" false
    if grep -q '^check test_subtract_itself ' "$tests"; then
        text="$tests already has test_subtract_itself: nothing to add."
        assistant "[{\"type\":\"text\",\"text\":$(json_str "$text")}]"
        success "$text" "$turns" 0
    fi
    added='check test_subtract_itself 0 subtract 7 7'
    # After the last test.
    ADDED=$added awk '
        { line[NR] = $0 }
        /^check / { last = NR }
        END { for (i = 1; i <= NR; i++) { print line[i]; if (i == last) print ENVIRON["ADDED"] } if (!last) print ENVIRON["ADDED"] }
    ' "$tests" >"$tmp/tests"
    assistant "[{\"type\":\"tool_use\",\"id\":\"toolu_stand_in_more\",\"name\":\"Write\",\"input\":{\"file_path\":$(json_str "$cwd/$tests"),\"content\":$(json_str "$(cat "$tmp/tests")")}}]"
    write_file toolu_stand_in_more "$tests" "$tmp/tests"
    if run_tests toolu_stand_in_more_run "Run the tests with the new one."; then
        text="Added test_subtract_itself (subtract 7 7 is 0) to $tests, as asked; \`sh check.sh\`: $tests_said."
    else
        text="Added test_subtract_itself (subtract 7 7 is 0) to $tests, as asked; \`sh check.sh\` is red: $tests_said."
    fi
    assistant "[{\"type\":\"text\",\"text\":$(json_str "$text")}]"
    success "$text" "$turns" 0
}

# $1 = tool_use id, $2 = file, $3 = its new content, $4 = "created" for a new file. Like the real CLI, a
# failed write is a tool error the model reads; here it ends the run, still with is_error:false.
write_file() {
    if { cat "$3" >"$2"; } 2>/dev/null; then
        if [ "${4:-}" = created ]; then
            tool_result "$1" "File created successfully at: $cwd/$2" false
        else
            tool_result "$1" "The file $cwd/$2 has been updated." false
        fi
        return
    fi
    tool_result "$1" "EACCES: permission denied, open '$cwd/$2'" true
    text="Tool error: permission denied writing $cwd/$2, so the fix is not complete."
    assistant "[{\"type\":\"text\",\"text\":$(json_str "$text")}]"
    success "$text" "$turns" 0
}

# The sample with tests: the first attempt fixes add() and breaks sub(); only a resumed run that was
# shown the failure (its prompt quotes test.sh's "FAIL sub" line) repairs sub(), and only in tests-fix.
do_tests_scenario() {
    if [ -z "$resume" ]; then
        printf 'add() { echo $(($1 + $2)); }\nsub() { echo $(($1 + $2)); }\n' >"$tmp/calc"
        text="Fixed add() in calc.sh."
    elif [ "$scenario" = tests-fix ] && grep -q 'FAIL sub' "$tmp/prompt"; then
        printf 'add() { echo $(($1 + $2)); }\nsub() { echo $(($1 - $2)); }\n' >"$tmp/calc"
        text="The tests showed that sub() adds; fixed it too (resumed session $resume)."
    else
        printf 'add() { echo $(($1 + $2)); }\nsub() { echo $(($1 * $2)); }\n' >"$tmp/calc"
        text="Tried another sub() (resumed session $resume)."
    fi
    assistant "[{\"type\":\"tool_use\",\"id\":\"toolu_fake_calc\",\"name\":\"Write\",\"input\":{\"file_path\":$(json_str "$cwd/calc.sh"),\"content\":$(json_str "$(cat "$tmp/calc")")}}]"
    write_file toolu_fake_calc calc.sh "$tmp/calc"
    printf 'Fix the calculator\n\n%s\n' "$text" >.claude-pr-summary.md
    assistant "[{\"type\":\"text\",\"text\":$(json_str "$text")}]"
    success "$text" 2 0.01
}

init

case $scenario in
    tests-fix | tests-red) do_tests_scenario ;;
    demo)
        # A follow-up resumes the session (--resume): the stand-in's one follow-up skill is the test the
        # demo's maintainer asks for (demo --follow-up).
        if [ -n "$resume" ]; then do_demo_follow_up; else do_demo_fix; fi
        ;;
    edit | write-fail) do_edit ;;
    wait)
        # Lets a test hold the run "in progress" and release it when it chooses.
        while [ ! -e .fake-claude-release ]; do sleep 0.1; done
        rm -f .fake-claude-release
        do_edit
        ;;
    noop)
        assistant '[{"type":"text","text":"The code already does what the issue asks."}]'
        success "Nothing to change: the code already does this. prompt-sha256=$prompt_sha"
        ;;
    invalid-key)
        msg='Invalid API key · Fix external API key'
        assistant "[{\"type\":\"text\",\"text\":$(json_str "$msg")}]"
        finish "{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":true,\"api_error_status\":401,\"duration_ms\":$(elapsed_ms),\"duration_api_ms\":0,\"num_turns\":1,\"result\":$(json_str "$msg"),\"stop_reason\":\"stop_sequence\",\"session_id\":$session_json,\"total_cost_usd\":0,\"usage\":{\"input_tokens\":0,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":0},\"modelUsage\":{},\"permission_denials\":[],\"terminal_reason\":\"completed\",\"uuid\":\"$(uuid)\"}" "$msg" 1
        ;;
    max-turns)
        n=${max_turns:-1}
        case $n in '' | *[!0-9]*) n=1 ;; esac
        assistant '[{"type":"text","text":"Let me look around first."}]'
        assistant '[{"type":"tool_use","id":"toolu_fake_ls","name":"Bash","input":{"command":"ls"}}]'
        tool_result toolu_fake_ls "CLAUDE.md" false
        err="Reached maximum number of turns ($n)"
        finish "{\"type\":\"result\",\"subtype\":\"error_max_turns\",\"is_error\":true,\"duration_ms\":$(elapsed_ms),\"duration_api_ms\":1000,\"num_turns\":$n,\"stop_reason\":\"tool_use\",\"session_id\":$session_json,\"total_cost_usd\":0.0123,\"usage\":$usage,\"modelUsage\":$(model_usage 0.0123),\"permission_denials\":[],\"errors\":[$(json_str "$err")],\"terminal_reason\":\"max_turns\",\"uuid\":\"$(uuid)\"}" "Error: $err" 1
        ;;
    hang)
        while :; do sleep 1; done
        ;;
    garbage)
        printf '<html>502 Bad Gateway</html>\nthis is {not JSON\n'
        echo "fake-claude: simulated crash" >&2
        exit 2
        ;;
    *)
        echo "fake-claude: unknown scenario '$scenario'" >&2
        exit 2
        ;;
esac
