# SegDepth: `make reproduce` runs the pipeline on small defaults, `make test` runs the tests.
# Both create and fill .venv by themselves (torch pinned to the CPU build this machine has on disk).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segdepth-installed
TORCH := torch==2.13.0
RUN_NB := $(PY) -m segdepth.apps.notebook

# One fine-tune of the robust lineage (base 8, binned input, crop 512, doses 0.2-32, 150 steps an epoch) through
# notebook 02: $(call FINETUNE,name,data,minutes,lr,patience,init model); everything it writes is named after name.
FINETUNE = $(RUN_NB) notebooks/02_training.py -o notebooks/executed/02_training_robust_$(1).ipynb \
	-p data $(2) -p input_binning 4 -p base_channels 8 -p crop 512 \
	-p lam_range '[0.2,32]' -p steps_per_epoch 150 -p epochs 200 -p max_minutes $(3) -p lr $(4) -p patience $(5) \
	-p init_model $(6) \
	-p checkpoint_dir data/checkpoints/robust_$(1)_base8_bin4 \
	-p model_out data/models/study/segdepth_robust_$(1)_base8_bin4.safetensors \
	-p history_out data/results/training_history_robust_$(1)_base8_bin4.nc \
	-p figure figures/training_history_robust_$(1)_base8_bin4.png

# WiSE-FT weight interpolation of two models: $(call WISE,base,tuned,alpha,output), model files.
WISE = $(PY) benchmarks/wise_model.py --base $(1) --tuned $(2) --alpha $(3) --out $(4)

# Two training sets written as one (structures kept distinct): $(call MERGE,first,second,output), dataset directories.
MERGE = $(PY) -c 'from segdepth.data.store import merge_datasets; merge_datasets(["$(1)", "$(2)"], "$(3)")'

.PHONY: support-study data-robust-support train-robust-support shift-support-test zone-check microscope-shift count-set-calibration dose-matching fresh4-shift-tests dose-matching-10 count-set-check cli-dose orientation
.PHONY: all venv browser test test-fast reproduce data train train-fast evaluate evaluate-fast reproduce-evaluate lint sync benchmark clean \
	study study-train study-denoise study-noise quickstart real-data data-robust robust-test shift-test train-robust evaluate-robust ablation \
	data-robust-phonons train-robust-phonons shift-phonons-test phonon-model \
	robust-wise-phonons data-robust-static2 robust-mix train-robust-mix robust-wise robust-wise-a0.5 \
	data-robust-quasi shift-quasi-test train-robust-quasi data-robust-low-spread robust-quasi-mix evaluate-quasi \
	data-robust-wide-spread shift-coherent-test robust-wide-mix train-robust-wide robust-wide-wise evaluate-wide \
	fresh-shift-tests evaluate-two fresh2-shift-tests evaluate-second evaluate-pair-shift \
	data-regime regime-test train-regime train-regime-blur evaluate-regime data-robust-static3 robust-flat-mix robust-wise-flat train-robust-flat train-robust-plain3 robust-flat-wise evaluate-flat reach-check \
	train-coherence fresh5-shift-tests fresh5-generate coherence-check wulff-particles

all: reproduce

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[learn,test,notebooks]"
	touch $(STAMP)

venv: $(STAMP)

# The browser tests (rendered book, tests/test_docs.py) drive Debian's chromium: installed here when absent.
CHROMIUM := $(shell command -v chromium 2>/dev/null)
browser:
ifeq ($(CHROMIUM),)
	(apt-get install -y -qq chromium chromium-driver || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)) \
		> /dev/null 2>&1 || echo "chromium could not be installed: the browser tests (test_docs, test_voila) will skip"
endif

test: $(STAMP) browser
	$(PY) -m ruff check segdepth tests benchmarks docs/book
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check segdepth tests benchmarks

# Keep the paired .ipynb files in step with the .py sources (the .py files are the source of truth).
sync: $(STAMP)
	$(VENV)/bin/jupytext --sync notebooks/*.py

# Step 01: simulated dataset + Fig. 3 (small defaults; set preset=paper for the paper's size)
data: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py

# Step 02: train the shipped model (base 16, lambda 2.5) on a training set made by 01 with
# `-p output data/simulated/cpu_train -p n_structures 100 -p n_defocus 4 -p seed 0` (see README).
train: $(STAMP)
	$(RUN_NB) notebooks/02_training.py

# Step 02, fast model (issue 6): the same recipe on input binned 4x to the label grid (21.2 pm pixels,
# no head downsampling); `segdepth predict`'s default model (base 8, 92 epochs: run as 60 + a resume to 92,
# one thread, 37 min). `make train-fast FAST_BASE=16 FAST_EPOCHS=60 FAST_MINUTES=45` is the larger one (52 epochs).
FAST_BASE ?= 8
FAST_EPOCHS ?= 92
FAST_MINUTES ?= 0
train-fast: $(STAMP)
	$(RUN_NB) notebooks/02_training.py -o notebooks/executed/02_training_fast_base$(FAST_BASE).ipynb \
		-p input_binning 4 -p base_channels $(FAST_BASE) -p epochs $(FAST_EPOCHS) -p max_minutes $(FAST_MINUTES) \
		-p checkpoint_dir data/checkpoints/fast_base$(FAST_BASE)_bin4_lam2.5 \
		-p model_out segdepth/models/segdepth_fast_base$(FAST_BASE)_bin4_lam2.5.safetensors \
		-p history_out data/results/training_history_fast_base$(FAST_BASE)_bin4_lam2.5.nc \
		-p figure figures/training_history_fast_base$(FAST_BASE)_bin4_lam2.5.png

# Issue 11: the robust default model. Randomised training set (500 structures x 4 images, every image its
# own optics; ~45 min with 2 workers), the shift test (40 structures x 2 images, another seed, optics away
# from the training centre, the sawtooth outline held out; ~4 min), fine-tuning of the fast model on it
# (resumes from its checkpoints; ROBUST_MINUTES per call), the side-by-side evaluation and the ablation.
ROBUST_MINUTES ?= 90
ROBUST_EPOCHS ?= 200
data-robust: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py -o notebooks/executed/01_robust_train.ipynb -p preset robust \
		-p n_structures 500 -p n_defocus 4 -p vacancy_max 0.2 -p seed 0 -p output data/simulated/robust_train \
		-p figure figures/fig3_robust_samples.png

# In-distribution test for the robust model: the training configuration, another seed (fresh structures).
robust-test: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py -o notebooks/executed/01_robust_test.ipynb -p preset robust \
		-p n_structures 40 -p n_defocus 2 -p vacancy_max 0.2 -p seed 2027 -p output data/simulated/robust_test \
		-p figure figures/fig3_robust_test_samples.png --into-pair

shift-test: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py -o notebooks/executed/01_shift_test.ipynb -p preset shift \
		-p n_structures 40 -p n_defocus 2 -p vacancy_max 0.2 -p seed 911 -p output data/simulated/shift_test \
		-p figure figures/fig3_shift_samples.png

train-robust: $(STAMP)
	$(RUN_NB) notebooks/02_training.py -o notebooks/executed/02_training_robust.ipynb \
		-p data data/simulated/robust_train -p input_binning 4 -p base_channels 8 -p crop 512 \
		-p lam_range '[0.2,32]' -p steps_per_epoch 150 -p epochs $(ROBUST_EPOCHS) -p max_minutes $(ROBUST_MINUTES) -p lr 5e-4 -p patience 12 \
		-p init_model segdepth/models/segdepth_fast_base8_bin4_lam2.5.safetensors \
		-p checkpoint_dir data/checkpoints/robust_base8_bin4 \
		-p model_out segdepth/models/segdepth_robust_base8_bin4.safetensors \
		-p history_out data/results/training_history_robust_base8_bin4.nc \
		-p figure figures/training_history_robust_base8_bin4.png

# Issue 11, next step: the robust distribution with thermal vibrations (preset robust_phonons: 3 structures
# in 4 with 2 frozen-phonon configurations), 240 fresh structures (seed 1) x 4 images, and a fine-tune of the
# robust model on it (same recipe, lower learning rate). Run on 2026-12-04: generation stopped after 180
# structures (68 min, shared cores), fine-tune 37.5 min / 22 epochs (best 9); not the default (see README).
# shift-phonons-test: the shift test's preset with 4 frozen-phonon configurations, seed 912, 10 x 2 images.
PHONON_MINUTES ?= 45
data-robust-phonons: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py -o notebooks/executed/01_robust_phonons_train.ipynb \
		-p preset robust_phonons -p n_structures 240 -p n_defocus 4 -p vacancy_max 0.2 -p seed 1 \
		-p output data/simulated/robust_phonons_train -p figure figures/fig3_robust_phonons_samples.png

train-robust-phonons: $(STAMP)
	$(call FINETUNE,phonons,data/simulated/robust_phonons_train,$(PHONON_MINUTES),3e-4,12,segdepth/models/segdepth_robust_base8_bin4.safetensors)

# Issue 11, third step (2026-12-04, second session): WiSE-FT weight interpolation of the robust default and
# its phonon fine-tune (alpha 0.5), a static-atom set of fresh structures (preset robust, seed 3; generation
# stopped after 140 of 200 structures), the two sets merged (structures kept distinct) and a fine-tune of
# the interpolated model on the mixture (static and frozen-phonon images).
MIX_MINUTES ?= 50
robust-wise-phonons: $(STAMP)
	$(call WISE,segdepth/models/segdepth_robust_base8_bin4.safetensors,data/models/study/segdepth_robust_phonons_base8_bin4.safetensors,0.5,data/models/study/segdepth_robust_wise_phonons_base8_bin4.safetensors)

# The default since this step: 0.8 robust + 0.2 robust_mix (alpha chosen on the ablation sets of notebook 07;
# its card lists the lineage; README). robust-wise-a0.5: WiSE-FT's default alpha, the default for a day.
robust-wise: $(STAMP)
	$(call WISE,segdepth/models/segdepth_robust_base8_bin4.safetensors,data/models/study/segdepth_robust_mix_base8_bin4.safetensors,0.2,segdepth/models/segdepth_robust_wise_base8_bin4.safetensors)

robust-wise-a0.5: $(STAMP)
	$(call WISE,segdepth/models/segdepth_robust_base8_bin4.safetensors,data/models/study/segdepth_robust_mix_base8_bin4.safetensors,0.5,data/models/study/segdepth_robust_wise_a0.5_base8_bin4.safetensors)

data-robust-static2: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py -o notebooks/executed/01_robust_static2_train.ipynb -p preset robust \
		-p n_structures 200 -p n_defocus 4 -p vacancy_max 0.2 -p seed 3 -p output data/simulated/robust_static2_train \
		-p figure figures/fig3_robust_static2_samples.png

robust-mix: $(STAMP)
	$(call MERGE,data/simulated/robust_phonons_train,data/simulated/robust_static2_train,data/simulated/robust_mix_train)

train-robust-mix: $(STAMP)
	$(call FINETUNE,mix,data/simulated/robust_mix_train,$(MIX_MINUTES),2e-4,10,data/models/study/segdepth_robust_wise_phonons_base8_bin4.safetensors) --into-pair

shift-phonons-test: $(STAMP)
	$(PY) -c 'from segdepth.physics.generate import PRESETS, generate_dataset; \
		generate_dataset(PRESETS["shift_phonons"], "data/simulated/shift_phonons_test", n_structures=10, workers=2)'

# Which simulator (2026-12-05): abTEM's quasi-coherent focal-spread envelope instead of the incoherent defocus
# average costs the robust models half their exact counts. robust_quasi: half the images made that way, half the
# structures vibrating (seed 5); shift-quasi-test: the shift test made that way (seed 914, 10 x 2 images); a
# fine-tune of the default on the new set.
QUASI_STRUCTURES ?= 96
QUASI_MINUTES ?= 40
data-robust-quasi: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py -o notebooks/executed/01_robust_quasi_train.ipynb -p preset robust_quasi \
		-p n_structures $(QUASI_STRUCTURES) -p n_defocus 4 -p vacancy_max 0.2 -p seed 5 \
		-p output data/simulated/robust_quasi_train -p figure figures/fig3_robust_quasi_samples.png

# robust_low_spread: the same with focal spreads of 0-10 A (coherent images too), seed 6; merged with the above.
LOW_SPREAD_STRUCTURES ?= 40
data-robust-low-spread: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py -o notebooks/executed/01_robust_low_spread_train.ipynb \
		-p preset robust_low_spread -p n_structures $(LOW_SPREAD_STRUCTURES) -p n_defocus 4 -p vacancy_max 0.2 -p seed 6 \
		-p output data/simulated/robust_low_spread_train -p figure figures/fig3_robust_low_spread_samples.png

robust-quasi-mix: $(STAMP)
	$(call MERGE,data/simulated/robust_quasi_train,data/simulated/robust_low_spread_train,data/simulated/robust_quasi_mix_train)

# Coherent images (no focal spread) cost the default a quarter of its counts; robust_wide_spread: focal
# spreads of 0-40 A, the incoherent way, half the structures vibrating (seed 7), merged with robust_low_spread;
# shift-coherent-test: the shift test without focal spread (seed 915). Run on 2026-12-05: generation 47 min,
# fine-tune 1,397 s (early stop, 25 epochs); the fine-tune and its average lose to the default (README): study
# models, not the default.
WIDE_STRUCTURES ?= 150
data-robust-wide-spread: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py -o notebooks/executed/01_robust_wide_spread_train.ipynb \
		-p preset robust_wide_spread -p n_structures $(WIDE_STRUCTURES) -p n_defocus 4 -p vacancy_max 0.2 -p seed 7 \
		-p output data/simulated/robust_wide_spread_train -p figure figures/fig3_robust_wide_spread_samples.png

shift-coherent-test: $(STAMP)
	$(PY) -c 'from segdepth.physics.generate import PRESETS, generate_dataset; \
		generate_dataset(PRESETS["shift_coherent"], "data/simulated/shift_coherent_test", n_structures=10, workers=2)'

robust-wide-mix: $(STAMP)
	$(call MERGE,data/simulated/robust_wide_spread_train,data/simulated/robust_low_spread_train,data/simulated/robust_wide_mix_train)

WIDE_MINUTES ?= 40
train-robust-wide: $(STAMP)
	$(call FINETUNE,wide,data/simulated/robust_wide_mix_train,$(WIDE_MINUTES),2e-4,10,segdepth/models/segdepth_robust_wise_base8_bin4.safetensors)

# Its weight average with the default (WiSE-FT's alpha 0.5, fixed before scoring).
robust-wide-wise: $(STAMP)
	$(call WISE,segdepth/models/segdepth_robust_wise_base8_bin4.safetensors,data/models/study/segdepth_robust_wide_base8_bin4.safetensors,0.5,data/models/study/segdepth_robust_wide_wise_base8_bin4.safetensors)

# The wide-spread fine-tune and its average beside the default: static, quasi-coherent, frozen-phonon and coherent
# shift tests, then the simulator benchmark.
evaluate-wide: $(STAMP)
	$(PY) benchmarks/phonon_model.py --models data/models/study/segdepth_robust_wide_base8_bin4.safetensors \
		data/models/study/segdepth_robust_wide_wise_base8_bin4.safetensors \
		segdepth/models/segdepth_robust_wise_base8_bin4.safetensors --test-sets data/simulated/shift_test \
		data/simulated/shift_quasi_test data/simulated/shift_phonons_test data/simulated/shift_coherent_test --tta \
		--lams 0.25 0.5 1 2.5 5 10 25 50 --out data/results/robustness_wide
	$(PY) benchmarks/simulator_shift.py --model default data/models/study/segdepth_robust_wide_base8_bin4.safetensors \
		data/models/study/segdepth_robust_wide_wise_base8_bin4.safetensors

# Issue 11 (2026-12-05, third session): the input divided by its local mean (UNet flatten_sigma, 1.5 A; the
# quasi-coherent envelope darkens thick regions by ~15 %, which the default reads as 1-1.7 atoms more). robust-wise-flat:
# the default with that layer and its own weights; data-robust-static3: fresh static structures of the default's
# distribution (seed 8); robust-flat-mix: them and robust_wide_spread (vibrating atoms, spreads 0-40 A), no
# quasi-coherent image; train-robust-flat: a fine-tune in the new representation; robust-flat-wise: its average with
# robust-wise-flat; train-robust-plain3: the control without the layer. Run on 2026-12-05: generation 27.5 min (200
# structures, 800 images), merge 70 s (1,400 images); timings of the fine-tunes in the README. Rule fixed before
# scoring: a candidate replaces the default only if its exact count averaged over lambda 1 / 2.5 / 10 and the four
# shift tests (static, vibrating, coherent, quasi-coherent: one shifted microscope, four simulators) is higher, and
# on the static shift test it loses at most 1 point at lambda 2.5 and at 10.
FLAT_STRUCTURES ?= 200
FLAT_MINUTES ?= 50
# Contrast regime (eighth session): the training and test sets of the contrast-regime check, which recognises
# underfocused images (the other defocus sign) that every counting model misreads (segdepth.learn.regime).
REGIME_STRUCTURES ?= 120
data-regime: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py -o notebooks/executed/01_regime_train.ipynb -p preset regime \
		-p n_structures $(REGIME_STRUCTURES) -p n_defocus 4 -p vacancy_max 0.2 -p seed 9 \
		-p output data/simulated/regime_train -p figure figures/fig3_regime_samples.png

regime-test: $(STAMP)
	$(PY) -c 'from segdepth.physics.generate import PRESETS, generate_dataset; \
		generate_dataset(PRESETS["shift_regime"], "data/simulated/shift_regime_test", n_structures=20, workers=2)'

REGIME_MINUTES ?= 25
# train-regime: the sharp model (data/models/study), 18 min; train-regime-blur: the shipped one, its fine-tune with
# every crop blurred by a Gaussian of 0-2 binned pixels (0-0.42 A) first (a camera's MTF), 4.6 min (early stop).
train-regime: $(STAMP)
	$(PY) -c 'from segdepth.learn.regime import train_regime; \
		train_regime("data/simulated/regime_train", "data/models/study/segdepth_regime_sharp_base8_bin4.safetensors", \
		minutes=$(REGIME_MINUTES), checkpoint_dir="data/checkpoints/regime")'

train-regime-blur: $(STAMP)
	$(PY) -c 'from segdepth.learn.regime import train_regime; \
		train_regime("data/simulated/regime_train", "segdepth/models/segdepth_regime_base8_bin4.safetensors", \
		minutes=12, blur=(0.0, 2.0), lr=5e-4, checkpoint_dir="data/checkpoints/regime_blur", \
		init_weights="data/models/study/segdepth_regime_sharp_base8_bin4.safetensors")'

evaluate-regime: $(STAMP)
	$(PY) benchmarks/regime_check.py --test data/simulated/shift_regime_test --output data/results/regime_check
	$(PY) benchmarks/regime_check.py --test data/simulated/shift_regime_test --output data/results/regime_check_sharp \
		--regime-model data/models/study/segdepth_regime_sharp_base8_bin4.safetensors

# The vacuum mask's reach (2026-12-05, ninth session; issue 12). A single real frame read on its own
# (--lattice-average 1) kept false columns in 5.4 % of the real movie's vacuum band in its worst frame: the hysteresis
# grew chains of low-dose readings up to 16 A from the lattice mask. assess(reach=R) keeps a reading only within R A
# of a seed (lattice mask or confident reading). R = 2 A was chosen on shift seeds 911 / 913, robust seed 555 and the
# real movie (all used before): 2 of 248 more columns lost at lambda 0.3, none elsewhere; the movie's single frames
# 0.946 -> 0.958 in the worst frame (17 -> 2 frames below 0.98), 5-frame maps 0.990 -> 0.992. Rule fixed before the
# fresh seeds below were ever simulated: REACH = 2 becomes the default only if, on shift seeds 971 and 973 and robust
# seed 557 (4 particles each, lambda 0.3 / 1 / 2.5 / 10), in every seed x dose cell the rule with reach 2 loses at
# most 1 column more to the mask than the unlimited hysteresis and its valid fraction is at most 1 point lower; and
# the real movie (segdepth predict as a user types it) keeps >= 0.98 of its vacuum band as vacuum in every frame with
# the default 5-frame maps and does not get worse frame by frame (worst frame and mean, --lattice-average 1).
# Scored on 2026-12-05 (9 min, data/results/reach_check.md): seed 973 at lambda 0.3 lost 2 columns with reach 2 and
# none without; everything else held (movie 0.990 -> 0.992 with 5-frame maps, single frames 0.946 -> 0.958). Not
# adopted: REACH stays None; --reach 2 is an option for single frames.
reach-check: $(STAMP)
	for s in 971 973; do $(PY) benchmarks/validity_checks.py --preset shift --seed $$s --reach 2 --default-rule-only \
		|| exit 1; done
	$(PY) benchmarks/validity_checks.py --preset robust --seed 557 --reach 2 --default-rule-only
	$(PY) benchmarks/real_movie_checks.py --model default --reach none
	$(PY) benchmarks/real_movie_checks.py --model default --reach 2
	$(PY) benchmarks/real_movie_checks.py --model default --reach none --lattice-average 1
	$(PY) benchmarks/real_movie_checks.py --model default --reach 2 --lattice-average 1

# The coherence check (2026-12-05, ninth session; issue 11): abTEM's quasi-coherent focal-spread envelope (a simulation
# shortcut) costs the pair half its exact counts and nothing flags it. train-coherence: a regime model
# (segdepth.learn.regime, target "quasi": the envelope with a spread >= 10 A) on the regime set (a quarter of its
# images quasi-coherent), 12 min. Rule fixed before fresh5 was simulated: it ships as a warning of segdepth predict
# (quasi_score; never a flag) only if, on the four fresh5 shift tests (seeds 975-978, FRESH5_STRUCTURES x 2 images)
# at lambda 1 / 2.5 / 10, at least 0.9 of the quasi-coherent frames score above 0.5 and at most 0.05 of the frames
# of each other test (static, vibrating, coherent) do; the real movie's score is reported, not a condition.
FRESH5_STRUCTURES ?= 10
train-coherence: $(STAMP)
	$(PY) -c 'from segdepth.learn.regime import train_regime; \
		train_regime("data/simulated/regime_train", "data/models/study/segdepth_quasi_sharp_base8_bin4.safetensors", \
		minutes=12, checkpoint_dir="data/checkpoints/quasi", target="quasi")'
fresh5-shift-tests: $(STAMP)
	$(MAKE) fresh5-generate FRESH_STRUCTURES=$(FRESH5_STRUCTURES)
fresh5-generate: $(STAMP)
	$(call FRESH,fresh5,975,976,977,978)
coherence-check: $(STAMP)
	$(PY) benchmarks/coherence_check.py --model data/models/study/segdepth_quasi_sharp_base8_bin4.safetensors \
		--test-sets $(call FRESH_SETS_OF,fresh5) --out data/results/coherence_check.md

# Particles our generator cannot make (2026-12-05, ninth session; not a decision): 3D CeO2 polyhedra cut from bulk,
# read by the default pair upright, vibrating, turned, and through the checked path (~12 min on 2 cores; README "Whole
# 3D particles, cut from bulk", data/results/wulff_particles.md is these runs' output).
wulff-particles: $(STAMP)
	$(PY) benchmarks/wulff_particles.py
	$(PY) benchmarks/wulff_particles.py --phonons 8
	$(PY) benchmarks/wulff_particles.py --turn random
	$(PY) benchmarks/wulff_particles.py --checked
	$(PY) benchmarks/wulff_particles.py --checked --phonons 8
	$(PY) benchmarks/wulff_particles.py --gpts 4096 --max-atoms 16 --radius 17 24 --checked --particles 4

# Other microscopes (2026-12-06, tenth session): every training set is at 300 kV with a 40 mrad objective aperture,
# and a real file states its high tension in its metadata (dm3/dm4, emd, ser). The same particles as
# simulator_shift's nominal lens, with an aperture of 30 / 20 mrad or none, and the whole simulation at 200 / 80 kV,
# read by the default pair. Rule fixed before scoring: if at 200 kV the pair's exact count is at least 15 points
# below its 300 kV count at both lambda 2.5 and 10, or its 90 % count sets hold the truth in fewer than 0.90 of the
# columns at either dose, segdepth predict makes frames whose beam energy (file metadata or --voltage) differs from
# the model card's by more than 1 % not valid (reason beam_energy); otherwise it only warns. The apertures are a
# measurement (no file states one reliably): their figures go into the default card's known_limits.
# Scored on 2026-12-06: 200 kV -13.9 / -23.1 points (0.597 / 0.538 against 0.736 / 0.769), count sets 0.990 / 0.996:
# not both doses -> a warning. 80 kV: -47.8 / -56.7 points, count sets 0.789 / 0.765. Second rule, fixed after that
# run and before the next (new particles, seed 78, never simulated): for each of 120 kV and 80 kV, if the pair's 90 %
# count sets hold the truth in fewer than 0.90 of the columns at lambda 2.5 or at 10, beam energies at or below it
# are made not valid (reason beam_energy); other energies that differ from the card's by more than 1 % warn.
# Scored: 120 kV 0.807 / 0.781 -> at or below 120 kV flagged (MIN_BEAM_ENERGY). The specimen tilts of the last line
# (5 and 10 mrad off the zone axis) are a measurement, not a decision.
microscope-shift: $(STAMP)
	$(PY) benchmarks/simulator_shift.py --model default-pair --kinds aperture30 aperture20 no_aperture kv200 kv80
	$(PY) benchmarks/simulator_shift.py --model default-pair --seed 78 --kinds kv200 kv120 kv80
	$(PY) benchmarks/simulator_shift.py --model default-pair --kinds tilt5 tilt10
	$(PY) benchmarks/simulator_shift.py --model default-pair --kinds pixel0.0265 pixel0.106 pixel0.212
	$(PY) benchmarks/simulator_shift.py --model default-pair --kinds carbon2 carbon5

# Amorphous carbon supports (2026-12-06, tenth session): a 2 / 5 nm film under simulator_shift's particles costs the
# default 20-32 points (make microscope-shift's fifth line). The training set and the shift test with films, for the
# next training (not run here: a CPU fine-tune of the base-8 network has traded one kind of image for another every
# time; the notebook-02 parameters of train-robust-support with -p base_channels 32 -p init_model '' on a GPU, on
# these images together with the static and vibrating sets, are the next step).
data-robust-support: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py -o notebooks/executed/01_robust_support_train.ipynb \
		-p preset robust_support -p n_structures 240 -p n_defocus 4 -p vacancy_max 0.2 -p seed 11 \
		-p output data/simulated/robust_support_train -p figure figures/fig3_robust_support_samples.png
train-robust-support: $(STAMP)
	$(call FINETUNE,support,data/simulated/robust_support_train,40,2e-4,10,$(DEFAULT))
# A first look (2026-12-06, tenth session; a study, not a decision: a new default needs every dependent table and
# figure regenerated): the default fine-tuned 25 min on 480 images of robust_support (120 structures, seed 11, half
# on a film), its 0.5 / 0.5 weight average with the default, both scored beside the default on six new particles
# (simulator_shift seed 79) in vacuum and on 2 / 5 nm films. Question fixed before the run: how much of the 20-32
# points does it recover, and how many does it cost in vacuum?
SUPPORT_FT := data/models/study/segdepth_robust_support_base8_bin4.safetensors
SUPPORT_WISE := data/models/study/segdepth_robust_support_wise_base8_bin4.safetensors
support-study: $(STAMP)
	$(call FINETUNE,support,data/simulated/robust_support_train,25,2e-4,10,$(DEFAULT))
	$(call WISE,$(DEFAULT),$(SUPPORT_FT),0.5,$(SUPPORT_WISE))
	$(PY) benchmarks/simulator_shift.py --seed 79 --model default-pair default $(SUPPORT_FT) $(SUPPORT_WISE) \
		--kinds carbon2 carbon5
shift-support-test: $(STAMP)
	$(PY) -c 'from segdepth.physics.generate import PRESETS, generate_dataset; \
		generate_dataset(PRESETS["shift_support"], "data/simulated/shift_support_test", n_structures=10, workers=2)'

# Other zone axes (2026-12-06, tenth session). benchmarks/zone_axes.py (CeO2 boxes 20 A thick seen along [110],
# [100], [111], [112], [310], seed 3001, read by the checked path): each lattice window judged alone, the check
# vouches for 0.32-0.38 of the [100] crystal, 0-0.26 of [111], 0-0.13 of [112], 0.81-0.91 of [310] (a single {200}
# family fits [110]). Candidate, chosen on that run: refute_radius 6 A (a crystal pixel with more than 30 % of the
# lattice windows within 6 A refuting [110] is other lattice): [100], [111], [112] 0.000 vouched, [110] 1.000.
# Rule fixed before the runs below: REFUTE_RADIUS becomes 6 A only if (1) on new boxes (seed 3002, 30 A thick) it
# vouches for at most 0.05 of the [100], [111] and [112] crystal and at least 0.98 of [110] at lambda 2.5 and 10;
# (2) on simulated [110] particles never used (validity_checks.py, robust preset, seed 981, 4 structures, lambda
# 0.3-10) the valid share of the column pixels drops by at most 0.5 points at every dose and no more columns are
# lost to the mask; (3) the Wulff particles (--checked) stay at least 0.99 vouched for; (4) on the real movie the
# vacuum band still reads depth 0 in >= 0.98 of its pixels in every frame and the share not vouched for grows by at
# most 5 points. [310] is not expected to be caught. Scored on 2026-12-06: (1) passed (0.000 / 1.000); (2) failed at
# lambda 10 (0.978 -> 0.972, -0.6 points; no column lost); (3) passed (0.998); (4) failed (not vouched 25.7 % -> 38.4 %,
# the Pt particle's neighbourhood): REFUTE_RADIUS stays None (data/results/zone_axes.md).
zone-check: $(STAMP)
	$(PY) benchmarks/zone_axes.py --seed 3002 --thickness 30
	$(PY) benchmarks/zone_axes.py --seed 3002 --thickness 30 --refute-radius 6
	$(PY) benchmarks/validity_checks.py --seed 981 --default-rule-only --refute-radius 6
	$(PY) benchmarks/wulff_particles.py --checked --refute-radius 6
	$(PY) benchmarks/real_movie_checks.py --model default
	$(PY) benchmarks/real_movie_checks.py --model default --refute-radius 6

data-robust-static3: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py -o notebooks/executed/01_robust_static3_train.ipynb -p preset robust \
		-p n_structures $(FLAT_STRUCTURES) -p n_defocus 4 -p vacancy_max 0.2 -p seed 8 \
		-p output data/simulated/robust_static3_train -p figure figures/fig3_robust_static3_samples.png

robust-flat-mix: $(STAMP)
	$(call MERGE,data/simulated/robust_static3_train,data/simulated/robust_wide_spread_train,data/simulated/robust_flat_mix_train)

# (The shipped card's role and known_limits were written after scoring; README "The default's second pass".)
robust-wise-flat: $(STAMP)
	$(PY) benchmarks/flatten_model.py --model segdepth/models/segdepth_robust_wise_base8_bin4.safetensors --sigma 1.5 \
		--out segdepth/models/segdepth_robust_wise_flat_base8_bin4.safetensors

train-robust-flat: $(STAMP)
	$(call FINETUNE,flat,data/simulated/robust_flat_mix_train,$(FLAT_MINUTES),2e-4,10,segdepth/models/segdepth_robust_wise_flat_base8_bin4.safetensors) -p flatten 1.5

# The control: the same fine-tune without the layer (same data, rate, patience; from the default's weights).
train-robust-plain3: $(STAMP)
	$(call FINETUNE,plain3,data/simulated/robust_flat_mix_train,$(FLAT_MINUTES),2e-4,10,segdepth/models/segdepth_robust_wise_base8_bin4.safetensors)

robust-flat-wise: $(STAMP)
	$(call WISE,segdepth/models/segdepth_robust_wise_flat_base8_bin4.safetensors,data/models/study/segdepth_robust_flat_base8_bin4.safetensors,0.5,data/models/study/segdepth_robust_flat_wise_base8_bin4.safetensors)

FLAT_MODELS := segdepth/models/segdepth_robust_wise_flat_base8_bin4.safetensors \
	data/models/study/segdepth_robust_flat_base8_bin4.safetensors \
	data/models/study/segdepth_robust_flat_wise_base8_bin4.safetensors \
	data/models/study/segdepth_robust_plain3_base8_bin4.safetensors
evaluate-flat: $(STAMP)
	$(PY) benchmarks/phonon_model.py --models $(FLAT_MODELS) segdepth/models/segdepth_robust_wise_base8_bin4.safetensors \
		--test-sets data/simulated/shift_test data/simulated/shift_quasi_test data/simulated/shift_phonons_test \
		data/simulated/shift_coherent_test --tta --lams 0.25 0.5 1 2.5 5 10 25 50 --out data/results/robustness_flat
	$(PY) benchmarks/simulator_shift.py --model default $(FLAT_MODELS)

# Issue 11 (2026-12-05, fourth session): two representations instead of the 180-degree copy. segdepth predict
# averages the default on the frame with a second pass on the frame turned by 180 degrees; the candidate makes that
# second pass with the default plus the local-mean layer (robust-wise-flat), at the same cost. It was found after the
# four shift tests above had been scored, so it is scored on four fresh ones (same presets, new seeds 931-935, never
# seen before this rule was written; FRESH_STRUCTURES structures x 2 images each). Rule fixed before scoring: the
# pair replaces the default's 180-degree pass only if its exact count averaged over lambda 1 / 2.5 / 10 and the four
# fresh tests is higher than the default's (both with the 180-degree pass, seed-1 noise), on the fresh static test
# it loses at most 1 point at lambda 2.5 and at 10, and on the real movie (benchmarks/real_movie_checks.py) the
# vacuum band still reads vacuum in >= 0.98 of its pixels in every frame. Scored on 2026-12-05 (make evaluate-two,
# 632 s + the movie): mean 0.402 against 0.397; static +0.5 / -0.7 points at lambda 2.5 / 10; movie band 0.998,
# worst frame 0.989. All three hold: the pair became the default's 180-degree pass (README).
FRESH_STRUCTURES ?= 20
# The four shift presets with new seeds: $(call FRESH,prefix,static seed,quasi seed,coherent seed,phonon seed) writes
# data/simulated/<prefix>_<preset>_test; FRESH_SETS_OF(prefix) names them.
FRESH = $(PY) -c 'from segdepth.physics.generate import PRESETS, generate_dataset; \
	[generate_dataset(PRESETS[k].with_(seed=s), f"data/simulated/$(1)_{k}_test", n_structures=$(FRESH_STRUCTURES), \
	workers=2) for k, s in (("shift", $(2)), ("shift_quasi", $(3)), ("shift_coherent", $(4)), ("shift_phonons", $(5)))]'
FRESH_SETS_OF = $(foreach k,shift shift_quasi shift_phonons shift_coherent,data/simulated/$(1)_$(k)_test)
FRESH_SETS := $(call FRESH_SETS_OF,fresh)
fresh-shift-tests: $(STAMP)
	$(call FRESH,fresh,931,934,935,932)

# The pair beside its two members on the fresh tests (8 doses), and on the real movie (needs fresh-shift-tests).
TWO_FLAT := segdepth/models/segdepth_robust_wise_flat_base8_bin4.safetensors
DEFAULT := segdepth/models/segdepth_robust_wise_base8_bin4.safetensors
evaluate-two: $(STAMP)
	$(PY) benchmarks/phonon_model.py --models segdepth/models/segdepth_robust_wise_base8_bin4.safetensors $(TWO_FLAT) \
		--pair segdepth/models/segdepth_robust_wise_base8_bin4.safetensors $(TWO_FLAT) --test-sets $(FRESH_SETS) --tta \
		--lams 0.25 0.5 1 2.5 5 10 25 50 --out data/results/robustness_two
	$(PY) benchmarks/real_movie_checks.py --model segdepth/models/segdepth_robust_wise_base8_bin4.safetensors \
		--rotated-model $(TWO_FLAT)
	$(PY) benchmarks/simulator_shift.py --model default default-pair

# Issue 11 (2026-12-05, fourth session, second step): a specialised second model. Since the default reads every
# frame first, the second pass may come from a model that is better on other simulators and worse on the default's
# own images. Candidates (existing study models, both with the local-mean layer): the layer fine-tune
# (segdepth_robust_flat: stronger on vibrating atoms, weaker on the nominal lens) and its 0.5 / 0.5 average
# (segdepth_robust_flat_wise). Scored on four more fresh shift tests (seeds 941-945, never used) beside the
# adopted pair. Rule fixed before scoring: a candidate replaces DEFAULT_ROTATED_MODEL only if its pair's exact count
# averaged over lambda 1 / 2.5 / 10 and the four new tests is higher than the adopted pair's, it loses at most 1
# point against it on the new static test at lambda 2.5 and at 10 and on the nominal lens's incoherent images
# (benchmarks/simulator_shift.py) at lambda 2.5 and at 10, and the real movie's vacuum band still reads depth 0
# in >= 0.98 of its pixels in every frame. Scored on 2026-12-05: both fail (mean 0.4043 / 0.4044 against 0.4053,
# static -1.8 / -1.2 points at lambda 10, nominal incoherent -7 to -12 / -2.5 to -6 points); the pair stays (README).
FRESH2_SETS := $(call FRESH_SETS_OF,fresh2)
fresh2-shift-tests: $(STAMP)
	$(call FRESH,fresh2,941,944,945,942)

SECOND_CANDIDATES := data/models/study/segdepth_robust_flat_base8_bin4.safetensors \
	data/models/study/segdepth_robust_flat_wise_base8_bin4.safetensors
evaluate-second: $(STAMP)
	$(PY) benchmarks/phonon_model.py --models --pair $(DEFAULT) $(TWO_FLAT) \
		$(foreach m,$(SECOND_CANDIDATES),--pair $(DEFAULT) $(m)) --test-sets $(FRESH2_SETS) --tta \
		--lams 0.5 1 2.5 10 25 --out data/results/robustness_second
	$(foreach m,$(SECOND_CANDIDATES),$(PY) benchmarks/real_movie_checks.py --model $(DEFAULT) --rotated-model $(m);)
	$(PY) benchmarks/simulator_shift.py --model default-pair $(foreach m,$(SECOND_CANDIDATES),$(DEFAULT)+$(m))

# Issue 11 (2026-12-05, fifth session): more passes in the checked mode. segdepth predict's check already reads
# every frame twice; the training augmentation is the four flips of the image (identity, up-down, left-right, 180
# degrees), so the checked mode may average more passes: the flips and/or other trained models (an ensemble of
# the study models: under a shift of the data, averaging networks is the most robust uncertainty estimate measured
# in the literature, Ovadia et al. 2019). The candidate is chosen on the fresh and fresh2 tests (already used for
# earlier decisions: selection only) and confirmed on four new fresh tests (seeds 951-955, generated before the
# candidate was chosen and not scored before it was fixed). Rule fixed before scoring: the candidate replaces the
# pair only if on the new tests its exact count averaged over lambda 1 / 2.5 / 10 and the four presets is at
# least 0.5 point higher than the pair's, it loses at most 1 point against the pair on the new static test at
# lambda 2.5 and at 10 and on the nominal lens's incoherent images (benchmarks/simulator_shift.py) at lambda 2.5
# and at 10, and the real movie's vacuum band still reads depth 0 in >= 0.98 of its pixels in every frame.
# Selection on 2026-12-05 (make pass-ensembles: benchmarks/pass_ensembles.py on fresh + fresh2, 24 test x dose
# cells, same noise): the pair 0.4035; the best candidates that keep the static tests within 1 point, the layer model alone through the
# four flips 0.4109 (4 passes) and all eight base-8 models through the four flips 0.4107 (32 passes, six more
# model files), +0.7 points: within the spread between the two selection families (+0.4 / +1.1) and not worth
# 2-16 times the network's time; the pair's own flips (D on identity and up-down, its second model on 180 degrees
# and left-right) +0.3. No candidate was put to the rule: fresh3 stays unscored, held out for the next decision.
FRESH3_SETS := $(call FRESH_SETS_OF,fresh3)
fresh3-shift-tests: $(STAMP)
	$(call FRESH,fresh3,951,954,955,952)

# The selection above (needs fresh-shift-tests and fresh2-shift-tests; ~20 min; probabilities cached outside the
# repository, tables in data/results/pass_ensembles.md).
pass-ensembles: $(STAMP)
	$(PY) benchmarks/pass_ensembles.py --test-sets $(FRESH_SETS) $(FRESH2_SETS) --cache /tmp/segdepth_pass_ensembles \
		--out data/results/pass_ensembles.md

# Issues 11 and 12 (2026-12-05, sixth session): count sets that keep their promise off the training distribution.
# The 90 % count sets segdepth predict reports (depth_low / depth_high, track_columns' count_low / count_high) are
# the most probable counts holding 0.9 of the probability; on vibrating atoms and quasi-coherent images they hold
# the truth in only 0.80-0.84 of the columns. Candidate: a larger probability mass per set (split conformal
# prediction, Angelopoulos & Bates 2021, arXiv:2107.07511), calibrated per kind of image on fresh + fresh2 (the four
# shift presets x lambda 1 / 2.5 / 10: 24 cells) and taken from the worst cell, so that it holds for the worst kind
# of microscope we can simulate, not on average; separately for the checked pair and for one pass. Rule fixed
# before scoring: a calibrated mass is adopted (written into the default's card, used by segdepth predict and
# track_columns) only if on the four fresh3 tests (seeds 951-955, never scored) at lambda 1 / 2.5 / 10 its sets
# hold the true count in >= 0.88 of the columns in every one of the 12 cells while the 0.9-mass sets fall below
# 0.88 in at least one; the mean set size is reported either way.
count-set-calibration: $(STAMP)
	$(PY) benchmarks/count_set_calibration.py --calibration-sets $(FRESH_SETS) $(FRESH2_SETS) \
		--test-sets $(FRESH3_SETS) --write-card --out data/results/count_set_calibration.md

# Issue 11 (2026-12-05, sixth session): dose matching. The default counts columns worse on cleaner images (the dose
# curve falls beyond lambda 10 per 0.053 A pixel, and conventional HRTEM doses are far higher). Candidate: when the
# dose is given (segdepth predict --lambda), bring a frame above the target down to it with Gaussian noise
# (segdepth.physics.noise.lower_dose) several times and average the distributions. Selection (ad hoc scripts, the
# default alone, fresh and fresh2 tests, 20-24 images each): targets 2.5 / 5 / 7.5 / 10 / 15 per 0.053 A pixel x
# 1 / 4 / 8 draws; 5 with 4 draws best or tied everywhere (static fresh: lambda 50 0.507 -> 0.618, lambda 1000
# 0.416 -> 0.614; frozen phonons 0.343 -> 0.450 at 50; fresh2 static lambda 25 0.547 -> 0.653, lambda 10 0.607 ->
# 0.631). Rule fixed before scoring: target 80 electrons per 0.212 A model pixel (5 per 0.053 A) with 4 draws is
# written into the cards of the default and its second model only if, for the pair (what segdepth predict
# reports, seed-1 noise) on the four fresh3 tests, the exact count averaged over lambda 10 / 25 / 50 / 100 and the
# four presets is at least 2 points higher than without, and no preset at any of those doses loses more than 1
# point. Doses at or below the target are unchanged by construction (the real movie's 0.3 is far below).
# Scored on 2026-12-05 (371 s): mean 0.4221 -> 0.4548 (+3.3 points; +3.7 to +7.5 at lambda 25-100 on every preset)
# but the quasi-coherent test at lambda 10 lost 1.5 points (0.334 -> 0.319): the rule fails, not adopted
# (data/results/dose_matching.md).
dose-matching: $(STAMP)
	$(PY) benchmarks/dose_matching.py --test-sets $(FRESH3_SETS) --target 80 --draws 4 --lams 10 25 50 100 \
		--write-card --out data/results/dose_matching

# Second candidate (2026-12-05, sixth session), chosen after the first failed: the target 10 per 0.053 A pixel
# (160 per model pixel) with 4 draws leaves lambda 10 and below unchanged by construction and, on fresh (the default
# alone), gained 5.0-9.8 points at lambda 50 and 1000 on the static, frozen-phonon and quasi-coherent tests. It is
# scored on four new fresh tests (fresh4, seeds 961-965, generated after this rule was committed). Rule fixed
# before scoring: written into both cards only if, for the pair on fresh4, the exact count averaged over lambda
# 25 / 50 / 100 and the four presets is at least 2 points higher than without and no preset at any of those doses
# loses more than 1 point.
FRESH4_SETS := $(call FRESH_SETS_OF,fresh4)
fresh4-shift-tests: $(STAMP)
	$(call FRESH,fresh4,961,964,965,962)
dose-matching-10: $(STAMP)
	$(PY) benchmarks/dose_matching.py --test-sets $(FRESH4_SETS) --target 160 --draws 4 --lams 25 50 100 \
		--write-card --out data/results/dose_matching_10

# segdepth predict as a user types it on high-dose frames (lambda 100): the dose estimated (no --lambda) against
# --lambda none (needs fresh4-shift-tests; about 2 min).
cli-dose: $(STAMP)
	$(PY) benchmarks/cli_dose.py --test-set data/simulated/fresh4_shift_test --images 12 --lam 100

# Crystals turned in the image plane: segdepth predict's checked default on fresh4 images turned by 0-90 degrees,
# with the orientation measured and turned back (the default) and read as given (needs fresh4-shift-tests; ~10 min).
orientation: $(STAMP)
	$(PY) benchmarks/orientation.py --out data/results/orientation.md

# The count sets as shipped (calibrated masses, dose matching above lambda 10) on fresh4, below and above the
# target and at the real movie's low dose: a check, not a decision (the masses were calibrated at lambda 1-10 without
# dose matching).
count-set-check: $(STAMP)
	$(PY) benchmarks/count_set_calibration.py --score-card --test-sets $(FRESH4_SETS) --lams 0.25 0.5 2.5 25 100 \
		--out data/results/count_set_check.md

# What segdepth predict reports since the pair was adopted, on the four original shift tests and the dose curve
# (for the README's issue-11 tables; not a decision).
evaluate-pair-shift: $(STAMP)
	$(PY) benchmarks/phonon_model.py --models --pair $(DEFAULT) $(TWO_FLAT) --test-sets data/simulated/shift_test \
		data/simulated/shift_phonons_test data/simulated/shift_quasi_test data/simulated/shift_coherent_test --tta \
		--lams 0.25 0.5 1 2.5 5 10 25 50 --out data/results/robustness_pair_shift

shift-quasi-test: $(STAMP)
	$(PY) -c 'from segdepth.physics.generate import PRESETS, generate_dataset; \
		generate_dataset(PRESETS["shift_quasi"], "data/simulated/shift_quasi_test", n_structures=10, workers=2)'

train-robust-quasi: $(STAMP)
	$(call FINETUNE,quasi,data/simulated/robust_quasi_mix_train,$(QUASI_MINUTES),2e-4,10,segdepth/models/segdepth_robust_wise_base8_bin4.safetensors)

# The quasi fine-tune beside the default on the static, quasi-coherent and frozen-phonon shift tests (8 doses,
# test-time averaging; needs shift-test, shift-quasi-test, shift-phonons-test), and the simulator benchmark.
evaluate-quasi: $(STAMP)
	$(PY) benchmarks/phonon_model.py --models data/models/study/segdepth_robust_quasi_base8_bin4.safetensors \
		segdepth/models/segdepth_robust_wise_base8_bin4.safetensors --test-sets data/simulated/shift_test \
		data/simulated/shift_quasi_test data/simulated/shift_phonons_test --tta --lams 0.25 0.5 1 2.5 5 10 25 50 \
		--out data/results/robustness_quasi
	$(PY) benchmarks/simulator_shift.py --model default data/models/study/segdepth_robust_quasi_base8_bin4.safetensors \
		segdepth/models/segdepth_robust_base8_bin4.safetensors segdepth/models/segdepth_fast_base8_bin4_lam2.5.safetensors

phonon-model: $(STAMP)
	$(PY) benchmarks/phonon_model.py --test-sets data/simulated/shift_test --out data/results/robustness_phonons_static
	$(PY) benchmarks/phonon_model.py --test-sets data/simulated/shift_phonons_test --out data/results/robustness_phonons_fp

evaluate-robust: $(STAMP)
	$(RUN_NB) notebooks/03_evaluation.py -o notebooks/executed/03_evaluation_robust.ipynb \
		-p data data/simulated/robust_test \
		-p models '["segdepth/models/segdepth_robust_wise_base8_bin4.safetensors","segdepth/models/segdepth_robust_base8_bin4.safetensors","data/models/study/segdepth_robust_wise_a0.5_base8_bin4.safetensors","segdepth/models/segdepth_fast_base8_bin4_lam2.5.safetensors"]' -p tta true \
		-p results data/results/evaluation_robust.nc -p examples data/results/evaluation_examples_robust.nc \
		-p table data/results/table1_robust.md -p figure_prefix figures/robust/ \
		-p shift_data '["data/simulated/shift_test","data/simulated/shift_phonons_test"]' -p dose_lams '[0.25,0.5,1,2.5,5,10,25,50]' \
		-p robustness_results data/results/robustness.nc -p robustness_table data/results/robustness.md -p record_in_card true \
		--into-pair

ablation: $(STAMP)
	$(RUN_NB) notebooks/07_robustness.py

# Issue 14: the compact test split shipped in data/test/ (cpu preset, 8 fresh structures x 2 images, seed 14,
# images rounded to 12 significant bits; 3.7 MB, about 2 min), the default dataset of notebooks 03-05 from a
# fresh clone. Skips the shards that exist; `$(PY) benchmarks/make_test_split.py --force` rebuilds it.
.PHONY: test-split
test-split: $(STAMP)
	$(PY) benchmarks/make_test_split.py

# Step 03: Table I, Figs. 1, 6, 7, 8 on the test split of the training set (committed results).
evaluate: $(STAMP)
	$(RUN_NB) notebooks/03_evaluation.py -p data data/simulated/cpu_train \
		-p results data/results/evaluation_lam2.5.nc -p examples data/results/evaluation_examples_lam2.5.nc \
		-p table data/results/table1_lam2.5.md -p figure_prefix figures/

# Step 03 for the fast model (issue 6): Table I row, Figs. 1, 6-8 under figures/fast/.
evaluate-fast: $(STAMP)
	$(RUN_NB) notebooks/03_evaluation.py -o notebooks/executed/03_evaluation_fast.ipynb \
		-p data data/simulated/cpu_train -p models '["segdepth/models/segdepth_fast_base$(FAST_BASE)_bin4_lam2.5.safetensors"]' \
		-p results data/results/evaluation_fast_lam2.5.nc -p examples data/results/evaluation_examples_fast_lam2.5.nc \
		-p table data/results/table1_fast_lam2.5.md -p figure_prefix figures/fast/

# Step 03 on the small dataset of step 01 with the shipped model; writes under */reproduce/.
reproduce-evaluate: $(STAMP)
	$(RUN_NB) notebooks/03_evaluation.py -o notebooks/executed/03_evaluation_reproduce.ipynb \
		-p data data/simulated/nb01_cpu -p results data/results/reproduce/evaluation_lam2.5.nc \
		-p examples data/results/reproduce/evaluation_examples_lam2.5.nc \
		-p table data/results/reproduce/table1_lam2.5.md -p figure_prefix figures/reproduce/

reproduce: data reproduce-evaluate

# Step 00: the students' quickstart (about a minute on one core).
quickstart: $(STAMP)
	OMP_NUM_THREADS=1 $(RUN_NB) notebooks/00_quickstart.py

# Step 08: the interactive explorer as a web app (Voila); SEGDEPTH_EXPLORER_GPTS=1024 for the tiny field.
.PHONY: explore
explore: $(STAMP)
	$(PY) -m pip install -q -e ".[explore]"
	SEGDEPTH_EXPLORER_GPTS=$${SEGDEPTH_EXPLORER_GPTS:-1536} $(VENV)/bin/voila notebooks/08_explorer.ipynb

# Issue 14: the rendered tutorial book (README + the committed notebooks with their outputs, never executed)
# in docs/book/_build/html; fails on any Sphinx warning or broken link.
.PHONY: docs
docs: $(STAMP)
	$(PY) docs/book/build.py --strict

# Issue 14: refresh the outputs (figures, tables, printed figures) carried by the committed .ipynb of the
# notebooks whose default parameters make the committed results (00 quickstart, 06 real movie). 01, 02 and
# 03 get theirs from the runs that made the robust results (make robust-test, train-robust-mix,
# evaluate-robust); 04, 05 and 07 from `make notebook-outputs-studies`.
.PHONY: notebook-outputs notebook-outputs-studies data-cpu-train
notebook-outputs: $(STAMP)
	OMP_NUM_THREADS=1 $(RUN_NB) notebooks/00_quickstart.py --into-pair
	$(RUN_NB) notebooks/06_real_data.py --into-pair

# The training set of the paper-layout model and of the issue-4 studies (README "Shipped model and results";
# 400 images, about 25 min with 2 workers, 354 MB; not in the repository).
data-cpu-train: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py -o notebooks/executed/01_cpu_train.ipynb -p output data/simulated/cpu_train \
		-p n_structures 100 -p n_defocus 4 -p seed 0 -p figure figures/fig3_cpu_train_samples.png

# 04 and 05 with the committed study results and models (04 resumes from data/results/noise_generalization.nc,
# 05 reuses the exported study models; both need data/simulated/cpu_train), 07 the whole ablation (about 1 h).
notebook-outputs-studies: $(STAMP)
	$(RUN_NB) notebooks/04_noise_generalization.py -o notebooks/executed/04_noise_generalization.ipynb \
		-p data data/simulated/cpu_train -p results data/results/noise_generalization.nc -p figure_prefix figures/ --into-pair
	$(RUN_NB) notebooks/05_denoise_baselines.py -o notebooks/executed/05_denoise_baselines.ipynb \
		-p data data/simulated/cpu_train -p direct_model data/models/study/base4_lam2.5.safetensors \
		-p checkpoint_root data/checkpoints/study -p model_dir data/models/study -p reuse_models true \
		-p results data/results/table2_denoise_baselines.nc -p table data/results/table2_denoise_baselines.md \
		-p figure_prefix figures/ --into-pair
	$(RUN_NB) notebooks/07_robustness.py -o notebooks/executed/07_robustness.ipynb --into-pair

# Step 06: the real movie in data/raw (Figs. 10-12).
real-data: $(STAMP)
	$(RUN_NB) notebooks/06_real_data.py

# Issue 4 studies at the reduced (CPU) size; paper size: see README "Studies". Each step resumes.
BATCH := $(PY) -m segdepth.apps.batch
STUDY_TRAIN := -p epochs 10 -p max_minutes 0 -p num_threads 1 --result-param history_out --workers 2 \
	-p checkpoint_dir 'data/checkpoints/study/base{base_channels}_lam{lam}' \
	-p model_out 'data/models/study/base{base_channels}_lam{lam}.safetensors' \
	-p history_out 'data/results/study/training/base{base_channels}_lam{lam}.nc' \
	-p figure 'figures/study/training_base{base_channels}_lam{lam}.png'
NOISE_LAMS := 0.05 0.1 0.25 0.5 1 2.5 5 10 25 50

study-train: $(STAMP)
	$(BATCH) notebooks/02_training.py --grid base_channels 4 --grid lam 0.1 2.5 10 -p head_channels '[8,16]' \
		$(STUDY_TRAIN) --merged data/results/study/training_base4.nc
	$(BATCH) notebooks/02_training.py --grid base_channels 8 --grid lam 2.5 -p head_channels '[16,32]' $(STUDY_TRAIN)
	$(BATCH) notebooks/02_training.py --grid base_channels 8 --grid lam_range '[0.25,25]' -p head_channels '[16,32]' \
		$(subst {lam},{lam_range},$(STUDY_TRAIN))

study-denoise: $(STAMP)
	$(RUN_NB) notebooks/05_denoise_baselines.py -p data data/simulated/cpu_train \
		-p direct_model data/models/study/base4_lam2.5.safetensors -p checkpoint_root data/checkpoints/study \
		-p model_dir data/models/study -p results data/results/table2_denoise_baselines.nc \
		-p table data/results/table2_denoise_baselines.md -p figure_prefix figures/

study-noise: $(STAMP)
	$(BATCH) notebooks/04_noise_generalization.py --grid test_lams $(NOISE_LAMS) --dim test_lams=test_lambda \
		-p data data/simulated/cpu_train -p figure_prefix '' -p results 'data/results/study/noise/lam{test_lams}.nc' \
		--workers 2 --merged data/results/noise_generalization.nc
	$(RUN_NB) notebooks/04_noise_generalization.py -p data data/simulated/cpu_train \
		-p results data/results/noise_generalization.nc -p figure_prefix figures/

study: study-train study-denoise study-noise

benchmark: $(STAMP)
	$(PY) benchmarks/simulation_throughput.py
	$(PY) benchmarks/simulation_speed.py --preset paper --structures 2 --images 10
	$(PY) benchmarks/inference_speed.py --threads 2

clean:
	rm -rf notebooks/executed data/simulated/nb01_* data/results/reproduce figures/reproduce .pytest_cache
