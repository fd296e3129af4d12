"""Guards on what reaches a model and what it answered: the input contract (:mod:`.contract`), reference
statistics (:mod:`.reference`, :mod:`.envelope`), the envelope checks (:mod:`.checks`), drift detection and its
episodes (:mod:`.drift`, :mod:`.monitor`, shared by processes: :mod:`.episodes`), the retraining trigger (:mod:`.trigger`), environment parity
(:mod:`.doctor`), occlusion explanations (:mod:`.explain`) and the hash-chained audit log (:mod:`.audit`).

Everything but the contract is imported only where it is used, so loading a model without a guard stays cheap."""
