#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Self-test of the test bed, with curl and openssl only (no code of the
# project): spec/support/testbed spec/support/selftest.sh
# Prints one line per check and "N passed, N failed"; exits 1 on any failure.

set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
py=/usr/bin/python3
: "${HC_TEST_EMULATOR:?run me as spec/support/testbed spec/support/selftest.sh}"
passed=0
failed=0
w=$(mktemp -d "$HC_TEST_TMP/selftest.XXXXXX")

# A private emulator (in front of the test bed's Orthanc): this test changes
# config and faults, which must not touch specs running beside it. It also
# shows that emulator.py runs on its own, with a Cloud Storage directory of its own.
testbed_gcs=${HC_TEST_GCS:-}
HC_TEST_TOKEN=selftest-token-$RANDOM
HC_TEST_API_KEY=selftest-key-$RANDOM
"$py" "$here/emulator.py" --port 0 --metadata-port 0 --orthanc "$HC_TEST_ORTHANC" \
    --store "$HC_TEST_STORE" --token "$HC_TEST_TOKEN" --api-key "$HC_TEST_API_KEY" --tmp "$w" \
    --gcs-root "$w/gcs" > "$w/emulator.out" 2> "$w/emulator.err" &
emu_pid=$!
trap 'kill $emu_pid 2>/dev/null; wait $emu_pid 2>/dev/null; rm -rf "$w"' EXIT
for _ in $(seq 200); do [ "$(wc -l < "$w/emulator.out")" -ge 2 ] && break; sleep 0.05; done
HC_TEST_EMULATOR=$(sed -n 1p "$w/emulator.out")
HC_TEST_METADATA_HOST=$(sed -n 2p "$w/emulator.out" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["metadata_host"])')
HC_TEST_EMULATOR_LOG="$w/emulator.err"
if [ -z "$HC_TEST_EMULATOR" ]; then
    echo "FAIL - the private emulator did not start:"; cat "$w/emulator.err"
    echo "0 passed, 1 failed"
    exit 1
fi
api="$HC_TEST_EMULATOR/v1/$HC_TEST_STORE/dicomWeb"

ok() { passed=$((passed + 1)); echo "ok   - $*"; }
bad() { failed=$((failed + 1)); echo "FAIL - $*"; }
check() { # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}

# post URL FILE CONTENT-TYPE [curl args...] -> $w/body, $w/headers; prints status
post() {
    local url=$1 file=$2 ctype=$3; shift 3
    curl -sS -o "$w/body" -D "$w/headers" -w '%{http_code}' -H 'Expect:' \
        -H "Content-Type: $ctype" --data-binary @"$file" "$@" "$url"
}

# multipart FILE... -> $w/mp.bin with boundary $b
b=selftest-boundary-$RANDOM$RANDOM
multipart() {
    : > "$w/mp.bin"
    local f
    for f in "$@"; do
        printf -- '--%s\r\nContent-Type: application/dicom\r\n\r\n' "$b" >> "$w/mp.bin"
        cat "$f" >> "$w/mp.bin"
        printf '\r\n' >> "$w/mp.bin"
    done
    printf -- '--%s--\r\n' "$b" >> "$w/mp.bin"
}
mp_type="multipart/related; type=\"application/dicom\"; boundary=$b"
body_has() { grep -q -- "$1" "$w/body"; }
header_has() { grep -qi -- "$1" "$w/headers"; }
json() { "$py" -c "import json,sys; d=json.load(open('$w/body')); print($1)"; }
jtrue() { "$py" -c "import json,sys; d=json.load(open('$w/body')); sys.exit(0 if ($1) else 1)"; }

gen() { "$py" "$here/gen_dicom.py" -o "$w/gen" "$@"; }
field() { "$py" -c "import json,sys; print(json.loads(sys.argv[1])['$1'])" "$2"; }

# ---- Orthanc directly
one=$(gen --size 2000)
f1=$(field path "$one"); sop1=$(field sop_instance_uid "$one"); study1=$(field study_uid "$one")
multipart "$f1"
s=$(post "$HC_TEST_DICOMWEB/studies" "$w/mp.bin" "$mp_type" -H 'Accept: application/dicom+json')
check "Orthanc stores a generated file (200)" [ "$s" = 200 ]
check "Orthanc lists it in 00081199" body_has "$sop1"

# ---- emulator: credentials
two=$(gen --size 3000)
f2=$(field path "$two"); sop2=$(field sop_instance_uid "$two")
multipart "$f2"
s=$(post "$api/studies" "$w/mp.bin" "$mp_type")
check "no credential -> 401" [ "$s" = 401 ]
check "401 is Google's envelope" jtrue "d['error']['status']=='UNAUTHENTICATED'"
check "envelope is application/json; charset=UTF-8" header_has 'content-type: application/json; charset=UTF-8'
s=$(post "$api/studies" "$w/mp.bin" "$mp_type" -H "Authorization: Bearer wrong")
check "bad token -> 401" [ "$s" = 401 ]
s=$(post "$HC_TEST_EMULATOR/v1/${HC_TEST_STORE%/*}/nope/dicomWeb/studies" "$w/mp.bin" "$mp_type" \
    -H "Authorization: Bearer $HC_TEST_TOKEN")
check "unknown store -> 404" [ "$s" = 404 ]
check "404 envelope says NOT_FOUND" jtrue "d['error']['status']=='NOT_FOUND'"

s=$(post "$api/studies" "$w/mp.bin" "$mp_type" -H "Authorization: Bearer $HC_TEST_TOKEN" \
    -H 'Accept: application/dicom+json')
check "static token stores (200)" [ "$s" = 200 ]
check "response is application/dicom+json" header_has 'content-type: application/dicom+json'
check "00081199 names the instance" body_has "$sop2"
check "RetrieveURL has Google's shape" body_has "/v1/$HC_TEST_STORE/dicomWeb/studies/"
check "Orthanc really has it" [ "$(curl -s -X POST -d "$sop2" "$HC_TEST_ORTHANC/tools/lookup" | grep -c Instance)" = 1 ]

s=$(post "$api/studies" "$w/mp.bin" "$mp_type" -H 'Accept: application/dicom+json' \
    --url-query "key=$HC_TEST_API_KEY" 2>/dev/null || \
    post "$api/studies?key=$HC_TEST_API_KEY" "$w/mp.bin" "$mp_type" -H 'Accept: application/dicom+json')
check "API key, same bytes again -> 200" [ "$s" = 200 ]

# ---- single application/dicom, XML without Accept
three=$(gen --size 1000)
f3=$(field path "$three"); sop3=$(field sop_instance_uid "$three")
s=$(post "$api/studies" "$f3" "application/dicom" -H "Authorization: Bearer $HC_TEST_TOKEN")
check "single application/dicom stores (200)" [ "$s" = 200 ]
check "no Accept -> application/dicom+xml" header_has 'content-type: application/dicom+xml'
check "XML is a NativeDicomModel naming the instance" \
    bash -c "grep -q NativeDicomModel '$w/body' && grep -q '$sop3' '$w/body'"

# ---- 409 on changed bytes
other=$(gen --size 1500 --sop "$sop3")
f3b=$(field path "$other")
s=$(post "$api/studies" "$f3b" "application/dicom" -H "Authorization: Bearer $HC_TEST_TOKEN" \
    -H 'Accept: application/dicom+json')
check "same SOP Instance UID, other bytes -> 409" [ "$s" = 409 ]
check "409 carries FailedSOPSequence with reason 272" \
    jtrue "d['00081198']['Value'][0]['00081197']['Value'][0]==272"
check "409 carries Google's FailureDetail" \
    jtrue "('already exists' in d['00081198']['Value'][0]['00091097']['Value'][0] and d['00081198']['Value'][0]['00090010']['Value'][0]=='GOOGLE')"
s=$(post "$api/studies/$study1" "$f3" "application/dicom" -H "Authorization: Bearer $HC_TEST_TOKEN" \
    -H 'Accept: application/dicom+json')
check "study UID in path not matching -> 409 (Orthanc's answer)" [ "$s" = 409 ]

# ---- a token from a JWT signed by openssl
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$w/key.pem" 2>/dev/null
openssl pkey -in "$w/key.pem" -pubout -out "$w/pub.pem"
email=selftest@test-project.iam.gserviceaccount.com
"$py" -c 'import json,sys; print(json.dumps({"kid":"k1","client_email":sys.argv[1],"public_key_pem":open(sys.argv[2]).read()}))' \
    "$email" "$w/pub.pem" > "$w/key.json"
s=$(post "$HC_TEST_EMULATOR/_control/keys" "$w/key.json" application/json)
check "control: register a key" [ "$s" = 200 ]
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
hdr=$(printf '{"alg":"RS256","typ":"JWT","kid":"k1"}' | b64url)
claims=$(printf '{"iss":"%s","scope":"https://www.googleapis.com/auth/cloud-healthcare","aud":"%s/token","iat":%d,"exp":%d}' \
    "$email" "$HC_TEST_EMULATOR" "$now" $((now + 3600)) | b64url)
sig=$(printf '%s.%s' "$hdr" "$claims" | openssl dgst -sha256 -sign "$w/key.pem" -binary | b64url)
printf 'grant_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Agrant-type%%3Ajwt-bearer&assertion=%s.%s.%s' \
    "$hdr" "$claims" "$sig" > "$w/form"
s=$(post "$HC_TEST_EMULATOR/token" "$w/form" application/x-www-form-urlencoded)
check "JWT bearer grant -> 200" [ "$s" = 200 ]
tok=$(json "d['access_token']" 2>/dev/null)
check "token looks issued (tok-...)" [ "${tok#tok-}" != "$tok" ]
four=$(gen)
f4=$(field path "$four")
s=$(post "$api/studies" "$f4" application/dicom -H "Authorization: Bearer $tok" -H 'Accept: application/dicom+json')
check "issued token stores (200)" [ "$s" = 200 ]
badsig=$(printf '%s.%s' "$hdr" "$claims" | openssl dgst -sha256 -sign "$w/key.pem" -binary | head -c 255 | b64url)
printf 'grant_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Agrant-type%%3Ajwt-bearer&assertion=%s.%s.%sAA' \
    "$hdr" "$claims" "$badsig" > "$w/form"
s=$(post "$HC_TEST_EMULATOR/token" "$w/form" application/x-www-form-urlencoded)
check "bad signature -> 400" [ "$s" = 400 ]
check "bad signature is invalid_grant" jtrue "d['error']=='invalid_grant'"
# A self-signed JWT used as the bearer token directly.
claims=$(printf '{"iss":"%s","sub":"%s","aud":"https://healthcare.googleapis.com/","iat":%d,"exp":%d}' \
    "$email" "$email" "$now" $((now + 3600)) | b64url)
sig=$(printf '%s.%s' "$hdr" "$claims" | openssl dgst -sha256 -sign "$w/key.pem" -binary | b64url)
s=$(post "$api/studies" "$f4" application/dicom -H "Authorization: Bearer $hdr.$claims.$sig" \
    -H 'Accept: application/dicom+json')
check "self-signed JWT as bearer stores (200)" [ "$s" = 200 ]

# ---- metadata server
s=$(curl -s -o "$w/body" -D "$w/headers" -w '%{http_code}' \
    "$HC_TEST_EMULATOR/computeMetadata/v1/instance/service-accounts/default/token")
check "metadata without Metadata-Flavor -> 403" [ "$s" = 403 ]
s=$(curl -s -o "$w/body" -D "$w/headers" -w '%{http_code}' -H 'Metadata-Flavor: Google' \
    "http://$HC_TEST_METADATA_HOST/computeMetadata/v1/instance/service-accounts/default/token?scopes=https://www.googleapis.com/auth/cloud-healthcare")
check "metadata token -> 200" [ "$s" = 200 ]
check "metadata answer carries Metadata-Flavor: Google" header_has 'metadata-flavor: Google'
check "metadata token has access_token, expires_in, token_type" \
    jtrue "(d['access_token'] and d['expires_in'] > 0 and d['token_type']=='Bearer')"
echo '{"metadata_enabled": false}' > "$w/cfg.json"
post "$HC_TEST_EMULATOR/_control/config" "$w/cfg.json" application/json > /dev/null
curl -s -m 3 -o /dev/null "http://$HC_TEST_METADATA_HOST/" ; rc=$?
check "metadata switched off -> connection refused on its port" [ "$rc" = 7 ]
echo '{"metadata_enabled": true}' > "$w/cfg.json"
post "$HC_TEST_EMULATOR/_control/config" "$w/cfg.json" application/json > /dev/null
s=$(curl -s -o /dev/null -w '%{http_code}' -H 'Metadata-Flavor: Google' "http://$HC_TEST_METADATA_HOST/")
check "metadata switched on again answers" [ "$s" = 200 ]

# ---- one fault rule: 503 twice with Retry-After and RetryInfo, then success
echo '[{"match":"store","status":503,"times":2,"retry_after":"1","retry_delay":"2s"}]' > "$w/faults.json"
post "$HC_TEST_EMULATOR/_control/faults" "$w/faults.json" application/json > /dev/null
five=$(gen); f5=$(field path "$five")
codes=
for _ in 1 2 3; do
    s=$(post "$api/studies" "$f5" application/dicom -H "Authorization: Bearer $HC_TEST_TOKEN" \
        -H 'Accept: application/dicom+json')
    codes="$codes $s"
    [ "$s" = 503 ] && cp "$w/headers" "$w/h503" && cp "$w/body" "$w/b503"
done
check "fault: 503, 503, then 200 (got$codes)" [ "$codes" = " 503 503 200" ]
check "fault: Retry-After: 1" grep -qi '^retry-after: 1' "$w/h503"
check "fault: RetryInfo 2s in the envelope" grep -q '"retryDelay": "2s"' "$w/b503"
echo '[{"match":"store","drop_after_bytes":100,"parent":"'"$HC_TEST_STORE"'"}]' > "$w/faults.json"
post "$HC_TEST_EMULATOR/_control/faults" "$w/faults.json" application/json > /dev/null
post "$api/studies" "$f5" application/dicom -H "Authorization: Bearer $HC_TEST_TOKEN" > /dev/null 2>&1
rc=$?
check "fault: dropped connection is a transport error for curl (rc=$rc)" [ "$rc" != 0 ]

# ---- stats never hold raw credentials
curl -s "$HC_TEST_EMULATOR/_control/stats" > "$w/body"
check "stats count faults and store statuses" \
    jtrue "(d['faults_fired']==3 and d['store_requests']['503']==2 and d['store_requests']['409']>=1)"
check "stats hold hashes, not the token" bash -c "! grep -q '$HC_TEST_TOKEN' '$w/body' && grep -q \$(printf %s '$HC_TEST_TOKEN' | sha256sum | cut -c1-64) '$w/body'"
check "emulator log holds no token nor key" \
    bash -c "! grep -q -e '$HC_TEST_TOKEN' -e '$HC_TEST_API_KEY' -e '$tok' '$HC_TEST_EMULATOR_LOG'"

# ---- delete: Google's own method, done in Orthanc
auth=(-H "Authorization: Bearer $HC_TEST_TOKEN")
six=$(gen --size 1000)
f6=$(field path "$six"); sop6=$(field sop_instance_uid "$six")
study6=$(field study_uid "$six"); series6=$(field series_uid "$six")
seven=$(gen --size 1000 --study "$study6")
f7=$(field path "$seven"); sop7=$(field sop_instance_uid "$seven"); series7=$(field series_uid "$seven")
for f in "$f6" "$f7"; do post "$api/studies" "$f" application/dicom "${auth[@]}" > /dev/null; done
in_orthanc() { curl -s -X POST -d "$1" "$HC_TEST_ORTHANC/tools/lookup" | grep -c '"Instance"'; }
check "delete: both instances stored" [ "$(in_orthanc "$sop6")$(in_orthanc "$sop7")" = 11 ]
del() { curl -sS -o "$w/body" -D "$w/headers" -w '%{http_code}' -X DELETE "$@"; }
s=$(del "$api/studies/$study6/series/$series6/instances/$sop6")
check "delete: no credential -> 401" [ "$s" = 401 ]
s=$(del "${auth[@]}" "$api/studies/$study6/series/$series7/instances/$sop6")
check "delete: instance under another series -> 404" [ "$s" = 404 ]
check "delete: 404 is Google's envelope" jtrue "d['error']['status']=='NOT_FOUND'"
s=$(del "${auth[@]}" "$api/studies/$study6/series/$series6/instances/$sop6")
check "delete: instance -> 200 {}" bash -c "[ $s = 200 ] && [ \"\$(tr -d ' \n' < '$w/body')\" = '{}' ]"
check "delete: that instance is gone from Orthanc, the other remains" \
    [ "$(in_orthanc "$sop6")$(in_orthanc "$sop7")" = 01 ]
s=$(del "${auth[@]}" "$api/studies/$study6/series/$series7")
check "delete: series -> 200" [ "$s" = 200 ]
op=$(json "d['name']" 2>/dev/null)
check "delete: series answers an operation name" \
    bash -c "[[ '$op' =~ ^projects/test-project/locations/us-central1/datasets/test-dataset/operations/[0-9]+$ ]]"
curl -sS -o "$w/body" "${auth[@]}" "$HC_TEST_EMULATOR/v1/$op"
check "delete: first poll is not done, metadata says DeleteSeries" \
    jtrue "('done' not in d and d['metadata']['apiMethodName'].endswith('.DeleteSeries'))"
curl -sS -o "$w/body" "${auth[@]}" "$HC_TEST_EMULATOR/v1/$op"
check "delete: second poll is done with an Empty response" \
    jtrue "(d['done'] is True and d['response']['@type']=='type.googleapis.com/google.protobuf.Empty')"
check "delete: the series is gone from Orthanc" [ "$(in_orthanc "$sop7")" = 0 ]
s=$(del "${auth[@]}" "$api/studies/$study6")
check "delete: a study that is gone -> 404" [ "$s" = 404 ]
s=$(del "${auth[@]}" "$api/studies/1.2..3")
check "delete: bad UID -> 400" [ "$s" = 400 ]
s=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$HC_TEST_DICOMWEB/studies/$study1")
check "delete: Orthanc's own DICOMweb has no DELETE (405)" [ "$s" = 405 ]

# ---- admin surface: a dataset and a DICOM store made through the API take DICOMweb
v1="$HC_TEST_EMULATOR/v1/projects/test-project/locations/us-central1"
adm() { curl -sS -o "$w/body" -w '%{http_code}' -H 'Expect:' "${auth[@]}" "$@"; }
s=$(adm -X POST --data-binary '{}' "$v1/datasets?datasetId=selftest")
check "admin: datasets.create -> 200, an operation" \
    bash -c "[ $s = 200 ] && [[ \"\$(tr -d ' \n' < '$w/body')\" =~ \"datasets/selftest/operations/\"[0-9]+ ]]"
s=$(adm -X POST --data-binary '{"labels": {"team": "imaging"}}' "$v1/datasets/selftest/dicomStores?dicomStoreId=s1")
check "admin: dicomStores.create -> 200, the store" jtrue "d['labels']=={'team':'imaging'}"
s=$(adm -X POST --data-binary '{}' "$v1/datasets/selftest/dicomStores?dicomStoreId=s1")
check "admin: a second create -> 409 ALREADY_EXISTS" jtrue "d['error']['status']=='ALREADY_EXISTS'"
s=$(adm -X PATCH --data-binary '{}' "$v1/datasets/selftest/dicomStores/s1?updateMask=colour")
check "admin: an unknown updateMask field -> 400 naming it" \
    jtrue "d['error']['status']=='INVALID_ARGUMENT' and 'colour' in d['error']['message']"
one=$(gen --size 1024)
s=$(post "$v1/datasets/selftest/dicomStores/s1/dicomWeb/studies" "$(field path "$one")" application/dicom \
    "${auth[@]}" -H 'Accept: application/dicom+json')
check "admin: the new store takes a STOW (-> $s)" [ "$s" = 200 ]

# ---- server-side routes: the directory standing for Cloud Storage
check "test bed: HC_TEST_GCS is the test bed emulator's Cloud Storage directory" [ -d "$testbed_gcs" ]
check "emulator: --gcs-root shown in its start line" \
    bash -c "sed -n 2p '$w/emulator.out' | grep -q '\"gcs_root\": \"$w/gcs\"'"
mkdir -p "$w/gcs/selftest-bkt/in" "$w/gcs/selftest-out"
one=$(gen --size 1024)
cp "$(field path "$one")" "$w/gcs/selftest-bkt/in/one.dcm"
echo "not DICOM" > "$w/gcs/selftest-bkt/in/two.dcm"
s=$(adm -X POST --data-binary '{"gcsSource": {"uri": "gs://selftest-bkt/in/**.dcm"}}' \
    "$v1/datasets/selftest/dicomStores/s1:import")
op=$(json "d['name']" 2>/dev/null)
adm "$HC_TEST_EMULATOR/v1/$op" > /dev/null   # the first poll: half done
adm "$HC_TEST_EMULATOR/v1/$op" > /dev/null
check "import: 1 success, 1 failure, an error" \
    jtrue "d['done'] and d['metadata']['counter']=={'success':'1','failure':'1'} and d['error']['code']==3"
check "import: the instance is in Orthanc" [ "$(in_orthanc "$(field sop_instance_uid "$one")")" = 1 ]
s=$(adm -X POST --data-binary '{"gcsSource": {"uri": "gs://selftest-bkt/../x.dcm"}}' \
    "$v1/datasets/selftest/dicomStores/s1:import")
check "import: a .. segment -> 400 naming gcsSource.uri" \
    jtrue "d['error']['details'][0]['fieldViolations'][0]['field']=='gcsSource.uri'"
s=$(adm -X POST --data-binary '{"gcsDestination": {"uriPrefix": "gs://selftest-out/x"}}' \
    "$v1/datasets/selftest/dicomStores/s1:export")
op=$(json "d['name']" 2>/dev/null)
adm "$HC_TEST_EMULATOR/v1/$op" > /dev/null
adm "$HC_TEST_EMULATOR/v1/$op" > /dev/null
check "export: both instances the store holds written under gs://selftest-out/x/" \
    [ "$(find "$w/gcs/selftest-out/x" -name '*.dcm' | wc -l)" = 2 ]

# ---- reads through the emulator are streamed: a 64 MiB instance, the emulator's peak RSS flat
big=$(gen --size 67108864 --fill zero)
fb=$(field path "$big"); sopb=$(field sop_instance_uid "$big")
studyb=$(field study_uid "$big"); seriesb=$(field series_uid "$big")
multipart "$fb"
post "$HC_TEST_DICOMWEB/studies" "$w/mp.bin" "$mp_type" > /dev/null
rm -f "$w/mp.bin"
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$emu_pid/status"; }
before=$(hwm)
curl -sS -o "$w/big.out" "${auth[@]}" "$api/studies/$studyb/series/$seriesb/instances/$sopb"
after=$(hwm)
check "retrieve through the emulator: all of it ($(stat -c %s "$w/big.out") bytes)" \
    [ "$(stat -c %s "$w/big.out")" -gt "$(stat -c %s "$fb")" ]
check "retrieve through the emulator: peak RSS grew $((after - before)) kB (< 16 MiB)" \
    [ $((after - before)) -lt 16384 ]
s=$(del "${auth[@]}" "$api/studies/$studyb")
check "delete: the big study -> 200" [ "$s" = 200 ]
rm -f "$w/big.out" "$fb"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
